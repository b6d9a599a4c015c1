"""The Flower runtime, peer side: one SuperNode is one peer, its partition-id its part of the split,
or, with `id` and `data` and no partition-id in its node config, a peer on its own data.

Flower has no client-to-client calls, so the ServerApp relays what peers exchange. Each
handler runs one step of peer.round for this peer and answers with what the others need:

    query.model    -> peer id (and partition-id, num-partitions, or own-data), and the model if trained
    train.local    train_step(round 0)                        -> PeerRound record + model
    train.distill  teach_students over the models that came   -> example batches + PeerRound record
    train.absorb   absorb the batches sent to me, train_step(r) -> PeerRound record + model

Between calls the peer lives in `context.state` (its model's arrays and spec, and every batch
it received), which Flower keeps per node across calls, also where each call runs in a fresh
process. Private data never enters a reply: only models, synthetic examples and metrics.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import fields
from typing import TYPE_CHECKING

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from peer.config import from_run_config
from peer.core.blob import ExampleBatch, InvalidPayload, ModelBlob
from peer.errors import UsageError
from peer.flower import records as rec
from peer.round import Transport, UnknownPeer

if TYPE_CHECKING:
    from peer.config import ExperimentConfig
    from peer.core.peer import Peer

# torch and the learners are imported inside the handlers that need them: in deployment each
# call is a fresh process, and query.model should not pay for them.

SELF = "self"  # name of this peer's own model inside context.state
STATE = "ckd.peer"  # ConfigRecord in context.state: the last round this peer trained
JUDGED = "ckd.judged"  # ConfigRecord in context.state: the validation gate's judgements (JSON)
# ArrayRecord in context.state: per student taught in the round of CONSULTED_ROUND, its model's
# probabilities on my own rows, which my retrain of that round distills from (--peer-distill)
CONSULTED = "ckd.consulted"
CONSULTED_ROUND = "ckd.consulted.round"
# node-config keys that say where this machine keeps the data; they override the run config's
NODE_DATA = ("data-dir", "data", "data-kind", "label", "test-data", "class-map", "classes")
# node-config keys of a peer on its own data (no partition-id), as `ckd peer --id NAME --learner KIND`
NODE_OWN = ("id", "learner")
# a peer id on its own data: it names the peer in records and in keys of context.state
PEER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
# run-config keys that are not ExperimentConfig fields
RUN_ONLY = {"peers": 10, "out": "runs/flower", "threads": 1, "timeout": 3600.0, "wait-nodes": 120.0}

app = ClientApp()


def experiment_config(run_config: dict, peers: int) -> ExperimentConfig:
    """ExperimentConfig from a Flower run config (keys are the options with dashes)."""
    return from_run_config(run_config, peers=peers)


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


def _whoami(context: Context) -> tuple[int, int] | str:
    """(partition-id, num-partitions) from the node config, checked; or, for a node that brings its
    own data (`id` and `data`, no partition-id), its peer id."""
    nc = context.node_config
    if "partition-id" not in nc and "num-partitions" not in nc and "id" in nc:
        pid = str(nc["id"])
        if not PEER_ID.fullmatch(pid):
            raise UsageError(
                f"node config id={pid!r}: a peer id is letters, digits, '-' and '_' (at most 64), "
                "starting with a letter or digit"
            )
        if not str(nc.get("data", "")):
            raise UsageError(f"node config id={pid!r} without partition-id: a peer on its own data needs data=PATH")
        return pid
    if "partition-id" not in nc or "num-partitions" not in nc:
        raise UsageError(
            "this SuperNode has no partition-id / num-partitions in its node config "
            '(start it with --node-config "partition-id=K num-partitions=N" for part K of a shared split, '
            'or "id=NAME data=PATH" for its own data)'
        )
    k, n = nc["partition-id"], nc["num-partitions"]
    if not isinstance(k, int) or not isinstance(n, int) or not 0 <= k < n or n < 2:
        raise UsageError(
            f"node config partition-id={k!r} num-partitions={n!r}: need 0 <= partition-id < "
            "num-partitions and num-partitions >= 2"
        )
    if any(key in nc for key in NODE_OWN):
        raise UsageError(
            f"node config partition-id={k} with {', '.join(key for key in NODE_OWN if key in nc)}: a part of a "
            "shared split is peer-K with the run's learners; give id and learner only to a peer on its own data"
        )
    return k, n


def _setup(context: Context) -> tuple[ExperimentConfig, int | str]:
    """The experiment as this node runs it, and which peer it is: part K, or the id of a peer on its own data."""
    from peer.config import ExperimentConfig
    from peer.process import configure_process

    configure_process(run_option(context.run_config, "threads"))
    who = _whoami(context)
    n = who[1] if isinstance(who, tuple) else run_option(context.run_config, "peers")
    cfg = experiment_config(context.run_config, n)
    # a machine's own copy of the data wins over the run's
    own = {
        key.replace("-", "_"): str(context.node_config[key]) or None for key in NODE_DATA if key in context.node_config
    }
    if own:
        cfg = ExperimentConfig(**{**{f.name: getattr(cfg, f.name) for f in fields(cfg)}, **own})
    return cfg, who[0] if isinstance(who, tuple) else who


def _test_set(cfg: ExperimentConfig, peer: Peer):
    from peer.experiment import limit_test, test_inputs

    _, test = _dataset(cfg)
    test = limit_test(cfg, test)
    return test_inputs(peer, test), test.y


def load_peer(context: Context) -> tuple[Peer, ExperimentConfig]:
    """This node's peer: its part of the split (or the whole of its own data), its model and received
    examples from state."""
    from peer.experiment import build_own_peer, build_whole_peer, whole_peer_kind
    from peer.learners import learner_from_blob

    cfg, who = _setup(context)
    train, _ = _dataset(cfg)
    if isinstance(who, str):
        kind = whole_peer_kind(cfg, str(context.node_config.get("learner", "")), "node config learner")
        peer = build_whole_peer(cfg, who, kind, train)
    else:
        peer = build_own_peer(cfg, who, cfg.learner_list()[who], train)
    state = context.state
    if f"{rec.MODEL}.{SELF}.spec" in state:
        learner = learner_from_blob(rec.get_blob(state, SELF), peer.learner.train_config.device)
        learner.train_config = peer.learner.train_config
        peer.learner = learner
    for key in rec.batch_keys(state, peer.id):
        peer.absorb(rec.get_batch(state, key))
    judged = state.get(JUDGED)
    if isinstance(judged, ConfigRecord):
        for sender, r, refused in json.loads(str(judged.get("json", "[]"))):
            peer.store.judge(str(sender), int(r), [str(c) for c in refused])
    consulted = state.get(CONSULTED_ROUND)
    consulted_round = consulted.get("round") if isinstance(consulted, ConfigRecord) else None
    if isinstance(consulted_round, int):
        peer.consulted = {consulted_round: rec.get_arrays(state, CONSULTED)}
    return peer, cfg


def peer_id(k: int) -> str:
    """The id of the peer holding part k, as in peer.experiment.peer_ids."""
    return f"peer-{k}"


def _trained_round(context: Context) -> int:
    state = context.state.get(STATE)
    r = state.get("round") if isinstance(state, ConfigRecord) else None
    return r if isinstance(r, int) else -1


def _save(context: Context, peer: Peer, round: int) -> None:
    rec.put_blob(context.state, SELF, peer.learner.to_blob())
    context.state[STATE] = ConfigRecord({"round": round})
    judged = [[s, r, list(refused)] for (s, r), refused in sorted(peer.store.judgements().items())]
    context.state[JUDGED] = ConfigRecord({"json": json.dumps(judged)})


def _identity(context: Context) -> ConfigRecord:
    """Who this node is; of a peer on its own data only its id (never where its data is)."""
    who = _whoami(context)
    if isinstance(who, str):
        return ConfigRecord({"peer-id": who, "own-data": True, "trained-round": _trained_round(context)})
    k, n = who
    return ConfigRecord(
        {"partition-id": k, "num-partitions": n, "peer-id": peer_id(k), "trained-round": _trained_round(context)}
    )


@app.query("model")
def query_model(msg: Message, context: Context) -> Message:
    """Who I am (partition-id -> peer id, or my own id) and, once trained, my model."""
    content = RecordDict({"peer": _identity(context)})
    if _trained_round(context) >= 0:
        content[f"{rec.MODEL}.{SELF}"] = context.state[f"{rec.MODEL}.{SELF}"]
        content[f"{rec.MODEL}.{SELF}.spec"] = context.state[f"{rec.MODEL}.{SELF}.spec"]
    return Message(content, reply_to=msg)


def _round_of(msg: Message) -> int:
    cfg = msg.content.get("round")
    r = cfg.get("round") if isinstance(cfg, ConfigRecord) else None
    if not isinstance(r, int):
        raise InvalidPayload(f"{msg.metadata.message_type} message carries no round number")
    return int(r)


def _train_and_report(
    msg: Message, context: Context, peer: Peer, cfg: ExperimentConfig, round: int, epochs: int
) -> Message:
    from peer.round import train_step

    record = train_step(peer, round, epochs, *_test_set(cfg, peer))
    _save(context, peer, round)
    content = RecordDict(
        {
            "peer": _identity(context),
            "about": ConfigRecord(
                {"learner": peer.learner.kind, "classes": list(peer.classes), "missing": peer.missing_classes()}
            ),
        }
    )
    rec.put_record(content, record)
    # what teachers get for the next round: at --blob-precision, with the model's profile
    rec.put_blob(content, peer.id, peer.snapshot(round + 1))
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
        raise InvalidPayload(
            f"asked to {verb} round {r}, but this peer last trained in round {_trained_round(context)}"
        )
    return r


class RelayTransport(Transport):
    """Models come with the ServerApp's message; pushed batches go into the reply it relays."""

    def __init__(self, models: RecordDict, reply: RecordDict) -> None:
        self.models, self.reply = models, reply

    def get_model(self, peer_id: str, round: int) -> ModelBlob:
        if peer_id not in rec.blob_names(self.models):
            raise UnknownPeer(f"no model of {peer_id!r} came with this message")
        return rec.get_blob(self.models, peer_id)

    def push_examples(self, peer_id: str, batch: ExampleBatch) -> bool:
        rec.put_batch(self.reply, batch)
        return True


@app.train("distill")
def train_distill(msg: Message, context: Context) -> Message:
    """Teach every peer whose model came with the message; reply with the batches and the record."""
    from peer.round import teach_students

    r = _next_round(msg, context, "teach in")
    peer, cfg = load_peer(context)
    content = RecordDict({"peer": _identity(context)})
    record = teach_students(peer, r, rec.blob_names(msg.content), RelayTransport(msg.content, content))
    # what the students' models said of my own rows, for my retrain in train.absorb (a new Peer)
    rec.put_arrays(context.state, CONSULTED, peer.consulted.get(r, {}))
    context.state[CONSULTED_ROUND] = ConfigRecord({"round": r})
    rec.put_record(content, record)
    return Message(content, reply_to=msg)


@app.train("absorb")
def train_absorb(msg: Message, context: Context) -> Message:
    """Store the batches sent to me (validated), retrain with round r, evaluate, publish."""
    r = _next_round(msg, context, "retrain for")
    peer, cfg = load_peer(context)
    for key in rec.batch_keys(msg.content):
        batch = rec.get_batch(msg.content, key)
        if batch.receiver != peer.id or batch.round != r:
            raise InvalidPayload(
                f"batch {batch.id} is for {batch.receiver} in round {batch.round}, not for me ({peer.id}) in round {r}"
            )
        peer.absorb(batch)
        rec.put_batch(context.state, batch)  # kept for every later retrain
    return _train_and_report(msg, context, peer, cfg, r, cfg.retrain_epochs)


def round_message(r: int) -> ConfigRecord:
    return ConfigRecord({"round": int(r)})


__all__ = ["PEER_ID", "app", "experiment_config", "load_peer", "round_message", "run_option"]
