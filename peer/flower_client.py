"""The peer as a Flower ClientApp: one SuperNode is one peer, its partition-id its part of the split.

Flower has no client-to-client calls, so the ServerApp relays what peers exchange. Each
handler does one phase of a round for this peer and answers with what the others need:

    query.model    -> partition-id, num-partitions, peer id, and the model if trained
    train.local    build the peer, train locally (round 0), evaluate -> metrics + model
    train.distill  given the other peers' models, teach each -> example batches + reports
    train.absorb   store the batches sent to me, retrain (round r), evaluate -> metrics + model

Between calls the peer lives in `context.state` (its model's arrays and spec, and every batch
it received), which Flower keeps per node across calls, also where each call runs in a fresh
process. Private data never enters a reply: only models, synthetic examples and metrics.
"""

from __future__ import annotations

import functools
import time
from dataclasses import fields
from typing import TYPE_CHECKING

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from peer import flower_records as rec
from peer.blob import InvalidPayload
from peer.errors import UsageError

if TYPE_CHECKING:
    from peer.experiment import ExperimentConfig
    from peer.peer import Peer

# torch and the learners are imported inside the handlers that need them: in deployment each
# call is a fresh process, and query.model should not pay for them.

SELF = "self"          # name of this peer's own model inside context.state
STATE = "ckd.peer"     # ConfigRecord in context.state: the last round this peer trained
# node-config keys that say where this machine keeps the data; they override the run config's
NODE_DATA = ("data-dir", "data", "data-kind", "label", "test-data")
# run-config keys that are not ExperimentConfig fields
RUN_ONLY = {"peers": 10, "out": "runs/flower", "threads": 1, "timeout": 3600.0, "wait-nodes": 120.0}

app = ClientApp()


def experiment_config(run_config: dict, peers: int) -> ExperimentConfig:
    """ExperimentConfig from a Flower run config (keys are field names with dashes)."""
    from peer.experiment import ExperimentConfig, with_privacy

    kwargs = {}
    for f in fields(ExperimentConfig):
        key = f.name.replace("_", "-")
        if f.name == "peers" or key not in run_config:
            continue
        value = run_config[key]
        default = f.default
        if default is None:  # an optional path or name: "" in the run config means none
            if not isinstance(value, str):
                raise UsageError(f"run config {key} = {value!r} should be a string")
            kwargs[f.name] = value or None
            continue
        kind = type(default)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
            raise UsageError(f"run config {key} = {value!r} should be {kind.__name__}")
        kwargs[f.name] = value
    # Flower fills every key from the app config: a knob counts as given where it differs from its default
    defaults = {f.name: f.default for f in fields(ExperimentConfig)}
    kwargs = with_privacy(kwargs, {k for k, v in kwargs.items() if v != defaults[k]})
    return ExperimentConfig(peers=peers, **kwargs)


def run_option(run_config: dict, key: str):
    """A run-config key that is not an experiment knob, with its default and type checked."""
    default = RUN_ONLY[key]
    value = run_config.get(key, default)
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, type(default)) or isinstance(value, bool):
        raise UsageError(f"run config {key} = {value!r} should be {type(default).__name__}")
    return value


@functools.lru_cache(maxsize=2)
def _dataset(cfg: ExperimentConfig):
    """(train, test): the run's --data, else Fashion-MNIST (cached per process and config)."""
    from peer.experiment import load_data

    return load_data(cfg)


def _whoami(context: Context) -> tuple[int, int]:
    """(partition-id, num-partitions) from the node config, checked."""
    nc = context.node_config
    if "partition-id" not in nc or "num-partitions" not in nc:
        raise UsageError("this SuperNode has no partition-id / num-partitions in its node config "
                         "(start it with --node-config \"partition-id=K num-partitions=N\")")
    k, n = nc["partition-id"], nc["num-partitions"]
    if not isinstance(k, int) or not isinstance(n, int) or not 0 <= k < n or n < 2:
        raise UsageError(f"node config partition-id={k!r} num-partitions={n!r}: need 0 <= partition-id < "
                         "num-partitions and num-partitions >= 2")
    return k, n


def _setup(context: Context) -> tuple[ExperimentConfig, int]:
    import torch

    from peer.experiment import ExperimentConfig

    torch.set_num_threads(run_option(context.run_config, "threads"))
    k, n = _whoami(context)
    cfg = experiment_config(context.run_config, n)
    # a machine's own copy of the data wins over the run's
    own = {key.replace("-", "_"): str(context.node_config[key]) or None
           for key in NODE_DATA if key in context.node_config}
    if own:
        cfg = ExperimentConfig(**{**{f.name: getattr(cfg, f.name) for f in fields(cfg)}, **own})
    return cfg, k


def _test_set(cfg: ExperimentConfig, peer: Peer):
    import numpy as np

    from peer.experiment import test_inputs

    _, test = _dataset(cfg)
    if cfg.test_limit:
        test = test.subset(np.arange(min(cfg.test_limit, len(test))))
    return test_inputs(peer, test), test.y


def load_peer(context: Context) -> tuple[Peer, ExperimentConfig]:
    """This node's peer: its part of the split, its model and received examples from state."""
    from peer.experiment import build_own_peer
    from peer.learners import learner_from_blob

    cfg, k = _setup(context)
    train, _ = _dataset(cfg)
    peer = build_own_peer(cfg, k, cfg.learner_list()[k], train)
    state = context.state
    if f"{rec.MODEL}.{SELF}.spec" in state:
        learner = learner_from_blob(rec.get_blob(state, SELF))
        learner.train_config = peer.learner.train_config
        peer.learner = learner
    for key in rec.batch_keys(state, peer.id):
        peer.absorb(rec.get_batch(state, key))
    return peer, cfg


def peer_id(k: int) -> str:
    """The id of the peer holding part k, as in peer.experiment.peer_ids."""
    return f"peer-{k}"


def _trained_round(context: Context) -> int:
    state = context.state.get(STATE)
    return int(state["round"]) if isinstance(state, ConfigRecord) and "round" in state else -1


def _save(context: Context, peer: Peer, round: int) -> None:
    rec.put_blob(context.state, SELF, peer.learner.to_blob())
    context.state[STATE] = ConfigRecord({"round": round})


def _identity(context: Context) -> ConfigRecord:
    k, n = _whoami(context)
    return ConfigRecord({"partition-id": k, "num-partitions": n, "peer-id": peer_id(k),
                         "trained-round": _trained_round(context)})


@app.query("model")
def query_model(msg: Message, context: Context) -> Message:
    """Who I am (partition-id -> peer id) and, once trained, my model."""
    content = RecordDict({"peer": _identity(context)})
    if _trained_round(context) >= 0:
        content[f"{rec.MODEL}.{SELF}"] = context.state[f"{rec.MODEL}.{SELF}"]
        content[f"{rec.MODEL}.{SELF}.spec"] = context.state[f"{rec.MODEL}.{SELF}.spec"]
    return Message(content, reply_to=msg)


def _round_of(msg: Message) -> int:
    cfg = msg.content.get("round")
    if not isinstance(cfg, ConfigRecord) or not isinstance(cfg.get("round"), int):
        raise InvalidPayload(f"{msg.metadata.message_type} message carries no round number")
    return int(cfg["round"])


def _train_and_report(msg: Message, context: Context, peer: Peer, cfg: ExperimentConfig, round: int,
                      epochs: int) -> Message:
    t = time.perf_counter()
    size = peer.train(epochs, round=round)
    train_seconds = time.perf_counter() - t
    t = time.perf_counter()
    evaluation = peer.evaluate(*_test_set(cfg, peer))
    _save(context, peer, round)
    content = RecordDict({
        "peer": _identity(context),
        "evaluation": rec.evaluation_record(evaluation, size, time.perf_counter() - t),
        "about": ConfigRecord({"learner": peer.learner.kind, "classes": list(peer.classes),
                               "missing": [c for c in range(len(peer.classes)) if not (peer.y == c).any()],
                               "train-seconds": train_seconds}),
    })
    rec.put_blob(content, peer.id, peer.learner.to_blob())
    return Message(content, reply_to=msg)


@app.train("local")
def train_local(msg: Message, context: Context) -> Message:
    """Round 0: train on my private data alone, evaluate, publish my model."""
    if _round_of(msg) != 0:
        raise InvalidPayload("train.local is round 0 only")
    peer, cfg = load_peer(context)
    return _train_and_report(msg, context, peer, cfg, 0, cfg.epochs)


def _next_round(msg: Message, context: Context, verb: str) -> int:
    """The message's round r, refused unless this peer last trained in round r - 1."""
    r = _round_of(msg)
    if _trained_round(context) != r - 1:
        raise InvalidPayload(f"asked to {verb} round {r}, but this peer last trained in round "
                             f"{_trained_round(context)}")
    return r


@app.train("distill")
def train_distill(msg: Message, context: Context) -> Message:
    """Teach every peer whose model came with the message; reply with the batches and reports."""
    r = _next_round(msg, context, "teach in")
    peer, cfg = load_peer(context)
    content = RecordDict({"peer": _identity(context)})
    for student in rec.blob_names(msg.content):
        if student == peer.id:
            continue
        batches, report = peer.teach(student, rec.get_blob(msg.content, student), r)
        for batch in batches:
            rec.put_batch(content, batch)
        rec.put_report(content, report)
    return Message(content, reply_to=msg)


@app.train("absorb")
def train_absorb(msg: Message, context: Context) -> Message:
    """Store the batches sent to me (validated), retrain with round r, evaluate, publish."""
    r = _next_round(msg, context, "retrain for")
    peer, cfg = load_peer(context)
    for key in rec.batch_keys(msg.content):
        batch = rec.get_batch(msg.content, key)
        if batch.receiver != peer.id or batch.round != r:
            raise InvalidPayload(f"batch {batch.id} is for {batch.receiver} in round {batch.round}, "
                                 f"not for me ({peer.id}) in round {r}")
        peer.absorb(batch)
        rec.put_batch(context.state, batch)  # kept for every later retrain
    return _train_and_report(msg, context, peer, cfg, r, cfg.retrain_epochs)


def round_message(r: int) -> ConfigRecord:
    return ConfigRecord({"round": int(r)})


__all__ = ["app", "experiment_config", "load_peer", "round_message", "run_option"]
