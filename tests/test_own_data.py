"""A peer is its data: the whole file, its own columns and class names (--class-map, --classes),
matched to other peers' by name; what reaches results.json from peers whose classes differ."""

from __future__ import annotations

import numpy as np
import pytest

from peer.config import ExperimentConfig
from peer.core.blob import InvalidPayload
from peer.data.sources import parse_class_map
from peer.errors import UsageError
from peer.experiment import build_whole_peer, load_data
from peer.round import PeerRound, RunLog, known_classes_only
from server.results import union_classes
from tests.own_sites import SITES, write_sites


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_sites(tmp_path_factory.mktemp("sites"))


def _cfg(site, path, **kw) -> ExperimentConfig:
    args = dict(zip(site.data_args(path)[::2], site.data_args(path)[1::2]))
    opts = {k[2:].replace("-", "_"): v for k, v in args.items()}
    return ExperimentConfig(**{"learners": "mlp", "epochs": 5, "retrain_epochs": 1, "seed": 5, **opts, **kw})


def test_class_map_parses_and_refuses_what_it_cannot_read():
    assert parse_class_map(" M = malignant,B=benign ") == {"M": "malignant", "B": "benign"}
    assert parse_class_map(None) == {} == parse_class_map("")
    for bad, says in (
        ("M", "bad --class-map entry 'M'"),
        ("=x", "bad --class-map entry"),
        ("M=a,M=b", "maps class 'M' twice"),
    ):
        with pytest.raises(UsageError, match=says):
            parse_class_map(bad)


def test_each_site_reads_its_own_file_into_the_shared_class_names(files):
    for site in SITES:
        train, test = load_data(_cfg(site, files[site.id]))
        assert train.classes == test.classes == ("benign", "malignant", "normal"), site.id
        assert set(train.features) == set(site.columns) | (
            {"ward=east", "ward=north", "ward=west"} if site.ward else set()
        )
        # the whole file; a seeded 20% held out unless the site has a test file of its own
        assert (len(train), len(test)) == (
            (site.rows, site.test_rows) if site.test_rows else (site.rows - len(test), round(0.2 * site.rows))
        )
        again = load_data(_cfg(site, files[site.id]))
        np.testing.assert_array_equal(again[1].y, test.y)
    b_train, b_test = load_data(_cfg(SITES[1], files["site-b"]))
    assert 2 not in set(b_train.y.tolist()) and 2 in set(b_test.y.tolist())  # site-b: `normal` named, no rows
    with pytest.raises(UsageError, match="label 'normal' in row .* is not a class of the training data"):
        load_data(_cfg(SITES[1], files["site-b"], classes=None))  # its test file's `normal`: name it first


def test_class_map_may_merge_spellings_and_must_name_real_classes(files, tmp_path):
    site = SITES[0]
    train, _ = load_data(_cfg(site, files[site.id], class_map="B=benign,M=sick,N=sick"))
    assert train.classes == ("benign", "sick")
    raw, _ = load_data(_cfg(site, files[site.id], class_map=None))
    np.testing.assert_array_equal(train.y, (raw.y != raw.classes.index("B")).astype(int))
    with pytest.raises(
        UsageError,
        match=r"--class-map names class\(es\) 'benign', which --data .* does not have "
        r"\(its classes: B, M, N\)",
    ):
        load_data(_cfg(site, files[site.id], class_map="benign=benign"))


def test_a_teacher_sends_nothing_of_a_class_its_student_does_not_predict(files):
    """site-a knows `normal`; a site-b that never named it gets no `normal` examples (it would
    refuse the batch), only the classes it predicts."""
    cfg_a = _cfg(SITES[0], files["site-a"])
    a = build_whole_peer(cfg_a, "site-a", "mlp", load_data(cfg_a)[0])
    cfg_b = _cfg(SITES[1], files["site-b"], classes=None, test_data=None)
    b = build_whole_peer(cfg_b, "site-b", "mlp", load_data(cfg_b)[0])
    assert b.classes == ("benign", "malignant") and a.classes == ("benign", "malignant", "normal")
    a.train(5)
    b.train(5)
    batches, report = a.teach("site-b", b.snapshot(1), 1)
    normal = [int((batch.y == 2).sum()) for batch in batches]
    assert sum(normal) > 0  # b is always wrong on `normal`: a would teach it
    with pytest.raises(InvalidPayload, match="unknown class name"):
        b.absorb(next(batch for batch, n in zip(batches, normal) if n))
    kept = [known_classes_only(batch, b.classes) for batch in batches]
    assert sum(k.dropped for k in kept) == sum(normal)
    for k in kept:
        if len(k.batch):
            assert b.absorb(k.batch)
    assert len(b.store) == sum(len(batch) for batch in batches) - sum(normal)


def test_results_put_peers_own_classes_side_by_side():
    log = RunLog()
    log.add(PeerRound("site-a", 0, evaluation={"accuracy": 0.9, "per_class": [1.0, 0.8, 0.9]}))
    log.add(PeerRound("site-b", 0, evaluation={"accuracy": 0.7, "per_class": [0.5, 0.9]}))
    classes, missing, own = union_classes(
        log,
        {"site-a": ("benign", "malignant", "normal"), "site-b": ("malignant", "benign")},
        {"site-a": [], "site-b": [1]},
    )
    assert classes == ("benign", "malignant", "normal")
    assert log.evaluations["site-b"][0]["per_class"] == [0.9, 0.5, None]
    assert missing == {"site-a": [], "site-b": [0]}  # site-b's class 1 is benign
    assert own == {"site-b": ("malignant", "benign")}


def test_an_image_peer_is_its_npz_with_its_own_class_names(tmp_path):
    rng = np.random.default_rng(1)
    y = np.array(["cat", "dog"] * 20)
    x = rng.integers(0, 256, (40, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "pets.npz", x=x, y=y)
    cfg = ExperimentConfig(
        data=str(tmp_path / "pets.npz"), class_map="cat=felis,dog=canis", classes="bird", learners="mlp", epochs=1
    )
    train, test = load_data(cfg)
    assert train.classes == test.classes == ("bird", "canis", "felis")
    peer = build_whole_peer(cfg, "clinic-7", "mlp", train)
    assert peer.id == "clinic-7" and peer.input_shape == (8, 8) and peer.missing_classes() == [0]
    assert len(peer.y) + len(peer.val_y) + len(test) == 40 and len(peer.val_y) > 0 and peer.x.max() <= 1.0
