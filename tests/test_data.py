"""IDX reading and validation, and the real Fashion-MNIST."""

import gzip

import numpy as np
import pytest

import peer.data.fashion as fashion
from peer.config import ExperimentConfig
from peer.data.fashion import FASHION_CLASSES, find_data_dir, load_fashion_mnist, read_idx
from peer.errors import UsageError
from peer.experiment import build_own_peer, build_part_peer, limit_test, load_own_part
from tests.conftest import write_idx


def test_read_idx_roundtrip_gzipped_and_raw(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(read_idx(write_idx(tmp_path / "a.gz", arr)), arr)
    assert np.array_equal(read_idx(write_idx(tmp_path / "a", arr, gz=False)), arr)


def test_truncated_idx_is_refused_naming_the_file(tmp_path):
    path = write_idx(tmp_path / "x-idx3-ubyte", np.zeros((4, 28, 28), np.uint8), gz=False)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(UsageError, match="x-idx3-ubyte is corrupt"):
        read_idx(path)


def test_bad_magic_and_broken_gzip_are_refused(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04" + b"\x00" * 20)
    with pytest.raises(UsageError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    (tmp_path / "bad.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x05abcde")[:-6])
    with pytest.raises(UsageError, match="cannot read IDX file"):
        read_idx(tmp_path / "bad.gz")


def test_data_dir_errors_say_what_is_missing(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        find_data_dir(tmp_path / "nope")
    with pytest.raises(UsageError, match="lacks Fashion-MNIST file"):
        find_data_dir(tmp_path)


def test_small_data_dir_loads(tiny_idx_dir):
    train, test = load_fashion_mnist(tiny_idx_dir)
    assert train.x.shape == (50, 28, 28) and test.x.shape == (20, 28, 28)
    assert train.y.dtype == np.int64 and set(train.y) == set(range(10))


def test_real_fashion_mnist(fmnist):
    train, test = fmnist
    assert train.x.shape == (60000, 28, 28) and train.x.dtype == np.uint8
    assert test.x.shape == (10000, 28, 28)
    assert np.bincount(train.y).tolist() == [6000] * 10
    assert np.bincount(test.y).tolist() == [1000] * 10
    assert train.classes == FASHION_CLASSES


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_keeps_only_the_rows_asked_for_in_their_order(tmp_path, monkeypatch, gz):
    monkeypatch.setattr(fashion, "ROWS_PER_BLOCK", 3)  # rows spread over several blocks, one cut short
    arr = np.arange(10 * 2 * 2, dtype=np.uint8).reshape(10, 2, 2)
    path = write_idx(tmp_path / "a", arr, gz=gz)
    for rows in ([7, 0, 3, 3, 9], [], [4], list(range(10))[::-1]):
        got = read_idx(path, np.array(rows, dtype=np.int64))
        assert got.shape == (len(rows), 2, 2) and np.array_equal(got, arr[rows])
    with pytest.raises(ValueError, match="must index the 10 rows"):
        read_idx(path, np.array([10]))
    empty = write_idx(tmp_path / "empty", np.zeros((0, 2, 2), np.uint8), gz=gz)
    assert read_idx(empty, np.array([], dtype=np.int64)).shape == (0, 2, 2)
    with pytest.raises(UsageError, match="holds 10 rows .* but 11 were expected"):
        read_idx(path, np.array([1]), count=11)
    path.write_bytes(path.read_bytes()[:-5] if not gz else gzip.compress(gzip.decompress(path.read_bytes())[:-5]))
    with pytest.raises(UsageError, match="is corrupt"):
        read_idx(path, np.array([1]))


def test_images_and_labels_of_different_lengths_are_refused(tiny_idx_dir):
    write_idx(tiny_idx_dir / "train-labels-idx1-ubyte.gz", (np.arange(49) % 10).astype(np.uint8))
    with pytest.raises(UsageError, match="holds 50 rows .* but 49 were expected"):
        load_fashion_mnist(tiny_idx_dir)


@pytest.mark.parametrize("split", ["dirichlet", "miss-class"])
def test_a_peer_process_loads_its_part_alone_and_gets_the_same_peer(fmnist, split):
    """load_own_part reads only peer k's rows and the test slice; the peer built on them is the one
    built from the whole data set: the same images, labels, order and seed."""
    cfg = ExperimentConfig(peers=4, split=split, train_per_peer=300, test_limit=500)
    train, test = fmnist
    for k in (0, 3):
        own, own_test = load_own_part(cfg, k)
        whole = build_own_peer(cfg, k, "mlp", train)
        alone = build_part_peer(cfg, k, "mlp", own)
        assert len(own) == 300  # the peer then keeps a validation slice of them
        assert np.array_equal(alone.x, whole.x) and np.array_equal(alone.y, whole.y)
        assert alone.id == whole.id == f"peer-{k}" and alone.seed == whole.seed
        cut = limit_test(cfg, test)
        assert np.array_equal(own_test.x, cut.x) and np.array_equal(own_test.y, cut.y)
