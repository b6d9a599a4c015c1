"""The Flower runtime, server side: sequences the phases of peer.round over ClientApps and relays
models and synthetic examples between them.

Flower has no client-to-client calls, so this app carries what peers exchange: each peer's
published model to the others (`train.distill`), and the example batches each teacher made
to their students (`train.absorb`). It never receives private data: only models, synthetic
examples and metrics. One message per node and phase, so a round costs two hops.

Order, the same as the in-process engine: train all (round 0) and evaluate; then for each
round r: every peer teaches every other from the models of round r - 1, all retrain with
round r, evaluate; after each round peer.round.stop_after decides from the peers' records
whether another follows (`rounds`, or "auto": until a round in which no peer improved).
Results go to the run config's `out` like `ckd demo`'s. A ClientApp error or a missing reply
stops the run with a one-line error naming the peer and the phase, in the log and in
`out/results.json`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from logging import ERROR, INFO
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from peer.config import ExperimentConfig, config_dict
from peer.core.blob import InvalidPayload
from peer.core.fanout import Profile, by_teacher, plan, profile_of
from peer.errors import UsageError
from peer.experiment import Experiment, peer_ids
from peer.flower import records as rec
from peer.flower.client_app import PEER_ID, experiment_config, round_message, run_option
from peer.round import PeerRound, RunLog, improved_in, stop_after
from server import results
from server.results import staged_output, table, union_classes, write_json

app = ServerApp()


class RunFailed(RuntimeError):
    """A peer failed or did not answer; the message names the peer and the phase."""


def error_reason(reason: str | None) -> str:
    """Flower's "<class 'pkg.Kind'>:<'message'>" as "Kind: message"."""
    if not reason:
        return "no reason given"
    m = re.fullmatch(r"<class '(?:[\w.]*\.)?(\w+)'>:<'(.*)'>", reason.strip(), re.S)
    return f"{m.group(1)}: {m.group(2)}" if m else reason


class Federation:
    """The peers behind a Grid: node id <-> peer id, and one batched exchange per phase."""

    def __init__(self, grid: Grid, timeout: float):
        self.grid = grid
        self.timeout = timeout
        self.peer_of: dict[int, str] = {}  # node id -> peer id
        self.node_of: dict[str, int] = {}

    def name(self, node: int) -> str:
        return f"{self.peer_of[node]} (node {node})" if node in self.peer_of else f"node {node}"

    def exchange(self, phase: str, round: int, contents: dict[int, RecordDict]) -> dict[int, RecordDict]:
        """Send one message per node, wait for every reply; RunFailed on an error or a timeout."""
        messages = [
            Message(content, dst_node_id=node, message_type=phase, group_id=str(round))
            for node, content in contents.items()
        ]
        answered = self.grid.send_and_receive(messages, timeout=self.timeout)
        # A reply is the node's, or the SuperLink's error on its behalf (e.g. the node stopped
        # sending heartbeats), which comes from the SuperLink's own id: match by message id.
        node_of_message = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
        replies = {node_of_message.get(m.metadata.reply_to_message_id, m.metadata.src_node_id): m for m in answered}
        errors = [
            f"{self.name(n)} failed in {phase} (round {round}): {error_reason(m.error.reason)}"
            for n, m in sorted(replies.items())
            if m.has_error()
        ]
        missing = [self.name(n) for n in contents if n not in replies]
        if missing:
            errors.append(f"no reply to {phase} (round {round}) within {self.timeout:.0f} s from {', '.join(missing)}")
        if errors:
            raise RunFailed("; ".join(errors))
        return {n: m.content for n, m in replies.items()}


def _config_of(content: RecordDict, key: str) -> Mapping[str, Any]:
    """A ConfigRecord of a reply; TypeError (a malformed reply) if it is another kind of record."""
    record = content[key]
    if not isinstance(record, ConfigRecord):
        raise TypeError(f"{key!r} is a {type(record).__name__}, not a ConfigRecord")
    return record


@contextmanager
def reply_of(fed: Federation, node: int, phase: str) -> Iterator[None]:
    """Turn a reply that lacks a field or has a wrong type into RunFailed naming the sender."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError, InvalidPayload) as exc:
        raise RunFailed(f"{fed.name(node)} sent a malformed reply to {phase}: {type(exc).__name__}: {exc}") from exc


def wait_for_nodes(grid: Grid, peers: int, wait: float) -> list[int]:
    """The node ids once `peers` nodes are connected; UsageError if they are not within `wait` s."""
    deadline = time.monotonic() + wait
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= peers:
            return nodes
        if time.monotonic() > deadline:
            raise UsageError(
                f"this run needs {peers} SuperNodes (run config peers={peers}) but {len(nodes)} "
                f"connected within {wait:.0f} s; in simulation pass --federation-config "
                f'"num-supernodes={peers}", or set -c peers={len(nodes) or "N"}'
            )
        time.sleep(1.0)


def discover(fed: Federation, nodes: list[int], peers: int) -> bool:
    """Ask each node who it is (query.model): either every node holds a part of the split, 0..peers-1
    once each, or every node is a peer on its own data with an id of its own. Returns the latter."""
    replies = fed.exchange("query.model", 0, {n: RecordDict({"round": round_message(0)}) for n in nodes})
    by_part: dict[int, int] = {}
    by_id: dict[str, int] = {}
    for node, content in sorted(replies.items()):
        with reply_of(fed, node, "query.model"):
            who = _config_of(content, "peer")
            if who.get("own-data"):
                pid = str(who["peer-id"])
                if not PEER_ID.fullmatch(pid):
                    raise ValueError(f"peer id {pid[:80]!r} is not a peer id")
                if pid in by_id:
                    raise UsageError(f"nodes {by_id[pid]} and {node} both are peer {pid!r} (node config id)")
                by_id[pid] = node
                continue
            k, n = int(who["partition-id"]), int(who["num-partitions"])
        if n != peers:
            raise UsageError(f"node {node} has num-partitions={n}, but this run has peers={peers}")
        if k in by_part:
            raise UsageError(f"nodes {by_part[k]} and {node} both hold partition-id={k}")
        by_part[k] = node
    if by_id and by_part:
        raise UsageError(
            f"nodes {', '.join(str(n) for n in sorted(by_part.values()))} hold parts of a shared split (partition-id) "
            f"and nodes {', '.join(str(n) for n in sorted(by_id.values()))} their own data (id); a run takes one or "
            "the other"
        )
    if by_id:
        if len(by_id) != peers:
            raise UsageError(f"{len(by_id)} nodes bring their own data, but this run has peers={peers}")
        for pid, node in sorted(by_id.items()):
            fed.peer_of[node], fed.node_of[pid] = pid, node
        return True
    missing = sorted(set(range(peers)) - set(by_part))
    if missing:
        raise UsageError(f"no node holds partition-id {missing}")
    ids = peer_ids(peers)
    for k, node in sorted(by_part.items()):
        fed.peer_of[node], fed.node_of[ids[k]] = ids[k], node
    return False


class Collector:
    """What the peers report: their PeerRound records (one schema with every runtime) and models."""

    def __init__(self, ids: list[str]):
        self.ids = ids
        self.records: dict[tuple[str, int], PeerRound] = {}
        self.models: dict[str, tuple] = {}
        self.learners: dict[str, str] = {}
        self.missing: dict[str, list[int]] = {}
        self.classes: dict[str, tuple[str, ...]] = {}  # each peer's class names (its own, on its own data)
        self.gallery: list[tuple[str, str, np.ndarray, str]] = []
        self.profiles: dict[str, Profile | None] = {}  # each published model's per-class accuracy

    def add(self, record: PeerRound) -> None:
        key = (record.peer, record.round)
        self.records[key] = self.records[key].merge(record) if key in self.records else record

    def trained(self, replies: dict[int, RecordDict], fed: Federation, phase: str) -> None:
        for node, content in replies.items():
            pid = fed.peer_of[node]
            with reply_of(fed, node, phase):
                record = rec.get_record(content, f"{pid} {phase}")
                if record.peer != pid:
                    raise ValueError(f"record names peer {record.peer!r}")
                about = _config_of(content, "about")
                learner, missing = str(about["learner"]), [int(c) for c in about["missing"]]
                self.classes[pid] = tuple(str(c) for c in about["classes"])
                # a forged model is refused here, not relayed to every peer
                self.profiles[pid] = profile_of(rec.get_blob(content, pid).spec)
                self.models[pid] = (content[f"{rec.MODEL}.{pid}"], content[f"{rec.MODEL}.{pid}.spec"])
            self.add(record)
            self.learners[pid], self.missing[pid] = learner, missing

    def accuracy(self, pid: str, round: int) -> float:
        return float(self.records[(pid, round)].evaluation["accuracy"])

    def log(self) -> RunLog:
        return RunLog.from_records(list(self.records.values()), self.ids)

    def experiment(self, cfg: ExperimentConfig, wall: float) -> Experiment:
        """The run as the peers reported it; peers on their own data may name their own classes
        (put side by side as `ckd server` does) and their own learners."""
        log = self.log()
        learners = [self.learners[p] for p in self.ids]
        if cfg.learner_list() != learners:  # a node config named another learner
            cfg = replace(cfg, learners=",".join(learners))
        classes, missing, own = union_classes(log, {p: self.classes[p] for p in self.ids}, self.missing)
        return Experiment(cfg, learners, missing, log, wall, classes, peer_classes=own)

    def model_records(self, students: list[str]) -> RecordDict:
        out = RecordDict()
        for pid, (arrays, spec) in self.models.items():
            if pid in students:
                out[f"{rec.MODEL}.{pid}"], out[f"{rec.MODEL}.{pid}.spec"] = arrays, spec
        return out

    def students(self, fanout: int) -> dict[str, list[str]]:
        """Teacher -> the students whose models it is sent this round (all others, or the fan-out
        plan of peer.core.fanout over the profiles of the models just published)."""
        return by_teacher(plan({p: self.profiles.get(p) for p in self.ids}, fanout))


def relay(
    replies: dict[int, RecordDict], fed: Federation, round: int, col: Collector, gallery: list | None = None
) -> dict[str, RecordDict]:
    """Sort each teacher's batches by student; a teacher may only send as itself, to known peers.

    `gallery` collects the first counterfactual of each pair's first batch (for the figure).
    """
    inbox = {pid: RecordDict({"round": round_message(round)}) for pid in fed.node_of}
    for node, content in replies.items():
        teacher = fed.peer_of[node]
        with reply_of(fed, node, "train.distill"):
            record = rec.get_record(content, f"{teacher} train.distill")
            if record.peer != teacher or any(t.teacher != teacher for t in record.teach):
                raise ValueError(f"record names teacher {record.peer!r}")
        col.add(record)
        for key in rec.batch_keys(content):
            try:  # the same checks and caps as a batch pushed over gRPC, before anything is relayed
                batch = rec.get_batch(content, key)
            except InvalidPayload as exc:
                raise RunFailed(f"{fed.name(node)} sent a malformed batch, refused: {exc}") from None
            if (
                batch.sender != teacher
                or batch.receiver not in inbox
                or batch.receiver == teacher
                or batch.round != round
            ):
                raise RunFailed(
                    f"{fed.name(node)} sent batch {key} claiming sender {batch.sender!r}, "
                    f"receiver {batch.receiver!r}, round {batch.round!r}; refused"
                )
            if key != rec.batch_key(batch):
                raise RunFailed(f"{fed.name(node)} sent batch {batch.id} under the key {key!r}; refused")
            rec.move_batches(content, inbox[batch.receiver], [key])
            if gallery is not None and batch.seq == 0:
                if len(batch):
                    gallery.append((batch.sender, batch.receiver, batch.inputs()[0], batch.classes[int(batch.y[0])]))
    return inbox


def run_ckd(grid: Grid, run_config: dict) -> tuple[Experiment, dict]:
    """The whole experiment over the grid; returns it and Flower-specific facts for results.json."""
    peers = run_option(run_config, "peers")
    if peers < 2:
        raise UsageError(f"run config peers must be at least 2, got {peers}")
    cfg = experiment_config(run_config, peers)
    fed = Federation(grid, run_option(run_config, "timeout"))
    nodes = wait_for_nodes(grid, peers, run_option(run_config, "wait-nodes"))
    own_data = discover(fed, nodes, peers)
    if len(nodes) > peers:
        log(INFO, "ckd: %d nodes connected, using the %d that hold partitions 0..%d", len(nodes), peers, peers - 1)
    ids = sorted(fed.node_of) if own_data else peer_ids(peers)
    col = Collector(ids)
    start = time.perf_counter()

    col.trained(
        fed.exchange("train.local", 0, {fed.node_of[p]: RecordDict({"round": round_message(0)}) for p in ids}),
        fed,
        "train.local",
    )
    log(INFO, "ckd: round 0 trained; median accuracy %.4f", float(np.median([col.accuracy(p, 0) for p in ids])))
    r = 0
    while (stopped := stop_after(r, improved_in(list(col.records.values()), r), cfg.rounds, cfg.max_rounds)) is None:
        r += 1
        asks = {}
        students = col.students(cfg.fanout)
        for p in ids:
            content = col.model_records(students[p])
            content["round"] = round_message(r)
            asks[fed.node_of[p]] = content
        inbox = relay(fed.exchange("train.distill", r, asks), fed, r, col, col.gallery if r == 1 else None)
        col.trained(fed.exchange("train.absorb", r, {fed.node_of[p]: inbox[p] for p in ids}), fed, "train.absorb")
        log(
            INFO,
            "ckd: round %d/%d done; %d examples sent; median accuracy %.4f",
            r,
            cfg.round_limit(),
            sum(t.sent for p in ids for t in col.records[(p, r)].teach),
            float(np.median([col.accuracy(p, r) for p in ids])),
        )
    log(INFO, "ckd: stopped after round %d: %s", r, stopped)
    wall = time.perf_counter() - start
    exp = col.experiment(cfg, wall)
    exp.log.stopped = stopped
    order = {p: i for i, p in enumerate(ids)}
    flower: dict[str, Any] = {"own_data": True} if own_data else {}
    flower |= {
        "nodes": {p: fed.node_of[p] for p in ids},
        "gallery": sorted(col.gallery, key=lambda g: (order[g[0]], order[g[1]]))[:12],
        "what": "wall_seconds runs from the first train.local to the last reply",
    }
    return exp, flower


def write_results(out: Path, exp: Experiment, flower: dict) -> dict:
    """results.json and the figures as every runtime writes them, plus counterfactuals.png."""
    gallery = flower.pop("gallery", [])
    # peers on their own data: the run is named as `ckd server` names it (this app knows no file names)
    extra = {"experiment": "own-data"} if flower.pop("own_data", False) else {}

    def also(stage: Path) -> list[str]:
        if gallery and np.asarray(gallery[0][2]).ndim >= 2:  # images
            write_gallery(gallery, stage / "counterfactuals.png")
            return ["counterfactuals.png"]
        return []

    return results.write_results(out, exp, "flower", {"flower": flower, **extra}, quiet=True, also=also)


def write_gallery(gallery: list, path: Path) -> None:
    """counterfactuals.png: one x' per teacher and student of round 1 (the private sources are
    not shown: they never leave their peer, and this app never sees them)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(gallery), figsize=(1.4 * len(gallery), 2.2), squeeze=False)
    for ax, (teacher, student, x, label) in zip(axes[0], gallery):
        ax.imshow(np.asarray(x).reshape(x.shape[-2:]), cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"{teacher[5:]}->{student[5:]}\n{label.split('/')[0]}", fontsize=7)
        ax.axis("off")
    fig.suptitle("Counterfactuals x' sent in round 1 (relayed by the ServerApp)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_failure(out: Path, error: str, run_config: dict) -> None:
    """results.json of a run that stopped: status, the error, and the config; nothing else."""
    try:
        config = config_dict(experiment_config(run_config, run_option(run_config, "peers")))
    except (UsageError, TypeError, ValueError):
        config = {str(k): v for k, v in run_config.items()}
    with staged_output(out) as stage:
        write_json(
            stage / "results.json", {"status": "failed", "error": error, "transport": "flower", "config": config}
        )


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_config = dict(context.run_config)
    out = Path(str(run_config.get("out", "runs/flower"))).expanduser()
    try:
        exp, flower = run_ckd(grid, run_config)
    except (RunFailed, UsageError) as exc:
        message = f"ckd: error: {exc}"
        log(ERROR, message)
        write_failure(out, str(exc), run_config)
        log(ERROR, "ckd: wrote %s", out.resolve() / "results.json")
        raise RunFailed(message) from None
    summary = write_results(out, exp, flower)
    for line in table(summary).splitlines():
        log(INFO, line)
    log(INFO, "ckd: results: %s", out.resolve() / "results.json")


__all__ = ["app", "run_ckd", "RunFailed"]
