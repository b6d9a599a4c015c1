"""CKD on a small slice of the real Fashion-MNIST: peers learn the class they never saw."""

import numpy as np
import pytest

from peer.config import ExperimentConfig
from peer.inprocess import run_experiment
from server.results import summarise

pytestmark = pytest.mark.slow


def _transport(kind):
    if kind == "grpc":
        from tests.loopback import LoopbackGrpc

        return LoopbackGrpc
    return None


@pytest.mark.parametrize("transport", ["in-process", pytest.param("grpc", marks=pytest.mark.grpc)])
def test_missing_class_accuracy_rises_by_a_clear_margin(fmnist, transport):
    # the paper's release: with 1,200 images a peer, the guarded default lets few examples pass
    # (a small private set's own neighbours sit far apart), which says little about the learning
    cfg = ExperimentConfig(
        privacy="paper",
        cf_start="instance",
        min_distance=0.0,
        peers=3,
        rounds=2,
        learners="cnn,mlp,cnn",
        train_per_peer=1200,
        epochs=3,
        retrain_epochs=2,
        test_limit=2000,
        seed=0,
    )
    exp = run_experiment(cfg, quiet=True, data=fmnist, transport=_transport(transport))
    summary = summarise(exp)
    before = summary["missing_class_accuracy_before"]
    after = summary["missing_class_accuracy_after"]
    assert before == [0.0, 0.0, 0.0]  # a peer never predicts a class it never saw
    assert min(after) >= 0.3, after
    assert np.mean(after) >= 0.5, after
    assert summary["median_accuracy_after"] > summary["median_accuracy_before"] + 0.03
    cf = summary["counterfactuals"]
    assert cf["made"] > 0 and cf["made"] + cf["failed"] + cf["duplicates_removed"] == cf["attempted"]
    for p in summary["peers"]:
        assert p["received"] > 0
        assert p["training_set_by_round"][2] > p["training_set_by_round"][1] > p["training_set_by_round"][0]
