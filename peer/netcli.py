"""`ckd server`, `ckd peer`, `ckd certs` and `ckd launch`: peers as separate processes over gRPC."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import fields
from pathlib import Path

import numpy as np

from peer.errors import UsageError

NET_HELP = "mutual TLS by default (--certs DIR from `ckd certs`); plaintext only with --insecure"


def _experiment_options(parser, skip=()) -> None:
    from peer.cli import DEMO_OPTIONS, _add
    from peer.experiment import ExperimentConfig

    defaults = {f.name: f.default for f in fields(ExperimentConfig)}
    for name, help in DEMO_OPTIONS:
        if name not in skip:
            _add(parser, name, defaults[name], help)


def _security_options(parser) -> None:
    from peer.cli import _add

    _add(parser, "certs", None, "directory with ca.pem and this process's NAME.pem, NAME.key")
    parser.add_argument("--insecure", action="store_true", help="plaintext gRPC, no TLS (only when asked)")


def add_commands(sub, formatter) -> None:
    from peer.cli import _add

    srv = sub.add_parser("server", formatter_class=formatter, help="run the coordinator of a gRPC run",
                         description="The coordinator: peers register with it, wait at its round barrier and "
                                     "report metrics;\nit never sees data or weights. " + NET_HELP + ".")
    _add(srv, "listen", "127.0.0.1:50051", "address to listen on")
    _add(srv, "rounds", 2, "rounds of teach and retrain after local training")
    _add(srv, "min_peers", 2, "peers that must register before the run starts")
    _add(srv, "round_deadline", 600.0, "seconds a barrier waits for slow peers before it skips them")
    _add(srv, "out", "runs/server", "output directory for results.json and accuracy.png")
    _security_options(srv)

    peer = sub.add_parser("peer", formatter_class=formatter, help="run one peer as a gRPC service",
                          description="One peer: loads its part of the data, serves its models and inbox over "
                                      "gRPC, and\ntakes part in the rounds. " + NET_HELP + ".")
    _experiment_options(peer, skip=("peers",))
    _add(peer, "peers", "10", "number of parts of the split, or a static peer list id=host:port,... "
                               "(then no coordinator)")
    _add(peer, "part", 0, "which part of the split is this peer's private data")
    _add(peer, "id", "", "peer id (default peer-PART; also its certificate name)")
    _add(peer, "learner", "", "this peer's learner kind (default: from --learners)")
    _add(peer, "listen", "127.0.0.1:0", "address to listen on (port 0: any free port)")
    _add(peer, "advertise", "", "host:port other peers use to reach this one (default: the listen address)")
    _add(peer, "coordinator", "", "host:port of `ckd server`")
    _add(peer, "round_deadline", 600.0, "without a coordinator: seconds to wait for slow peers")
    _add(peer, "state_dir", "state/peer", "model checkpoints and the SQLite store of received examples")
    _add(peer, "threads", 1, "torch CPU threads")
    _security_options(peer)

    certs = sub.add_parser("certs", formatter_class=formatter, help="make a CA and certificates for peers",
                           description="A CA (kept if DIR has one) and a key and certificate per name; the name "
                                       "is the\ncertificate's common name, so a peer's id is its identity.")
    _add(certs, "out", "certs", "output directory")
    _add(certs, "names", "", "comma-separated names, e.g. coordinator,peer-0,peer-1")
    _add(certs, "peers", 0, "also make coordinator and peer-0 .. peer-(N-1)")
    _add(certs, "hosts", "", "comma-separated IP addresses or DNS names added to every certificate made, "
                             "for servers\nclients reach by address (e.g. a Flower SuperLink at 10.0.0.5)")

    launch = sub.add_parser("launch", formatter_class=formatter,
                            help="run a whole experiment as a coordinator and N peer processes on loopback",
                            description="Start a coordinator and one process per peer on this machine, over "
                                        "gRPC with mutual TLS,\nrun the experiment and write results.json, "
                                        "accuracy.png and counterfactuals.png like `ckd demo`.")
    _experiment_options(launch)
    _add(launch, "out", "runs/launch", "output directory (replaced only when the run succeeds)")
    _add(launch, "state_dir", "", "peers' state directories and logs (default: a temporary directory)")
    _add(launch, "round_deadline", 600.0, "seconds a barrier waits for slow peers")
    _add(launch, "threads", 1, "torch CPU threads per peer process")
    launch.add_argument("--insecure", action="store_true", help="plaintext gRPC between the processes")
    launch.add_argument("--quiet", action="store_true", help="no progress messages")


# -- helpers ------------------------------------------------------------------------------------
def _security(name: str, args):
    from peer.tls import Security

    return Security.from_dir(name, Path(args.certs) if args.certs else None, args.insecure)


def _peer_list(text: str) -> dict[str, str]:
    out = {}
    for item in text.split(","):
        pid, sep, addr = item.strip().partition("=")
        if not sep or not pid or ":" not in addr:
            raise UsageError(f"bad --peers entry {item!r}; write id=host:port,id=host:port,...")
        out[pid] = addr
    return out


def experiment_from_metrics(metrics: dict[str, dict[int, dict]], rounds: int, wall: float, timings: dict,
                            state_dirs: dict[str, Path] | None = None):
    """The run as an Experiment (for report.summarise) from the peers' reported metrics."""
    from peer.engine import RunLog
    from peer.experiment import Experiment, ExperimentConfig
    from peer.peer import TeachReport

    ids = sorted(metrics, key=lambda p: metrics[p][0]["part"])
    missing_rounds = [p for p in ids if sorted(metrics[p]) != list(range(rounds + 1))]
    if missing_rounds:
        raise UsageError(f"no metrics for every round from {', '.join(missing_rounds)}")
    first = {p: metrics[p][0] for p in ids}
    kinds = [first[p]["learner"] for p in ids]
    cfg_fields = {f.name for f in fields(ExperimentConfig)}
    config = {k: v for k, v in first[ids[0]]["config"].items() if k in cfg_fields}
    config.update(peers=len(ids), learners=",".join(kinds), rounds=rounds)
    cfg = ExperimentConfig(**config)
    log = RunLog()
    order = {p: k for k, p in enumerate(ids)}
    teach = []
    for p in ids:
        log.evaluations[p] = [metrics[p][r]["evaluation"] for r in range(rounds + 1)]
        log.train_sizes[p] = [metrics[p][r]["train_size"] for r in range(rounds + 1)]
        gallery = {}
        if state_dirs and (state_dirs[p] / "gallery.npz").exists():
            with np.load(state_dirs[p] / "gallery.npz", allow_pickle=False) as g:
                for s, src, cf, lab in zip(g["students"], g["sources"], g["counterfactuals"], g["labels"]):
                    gallery[str(s)] = [(src, cf, int(lab))]
        for r in range(1, rounds + 1):
            for t in metrics[p][r].get("teach", []):
                rep = TeachReport(t["teacher"], t["student"], t["round"], **{
                    k: t[k] for k in ("qualified", "attempted", "failed", "duplicates", "counterfactuals", "sent",
                                      "mean_steps", "seconds", "counterfactual_seconds", "source_l1")})
                rep.nearest_private_l2 = t.get("nearest_private_l2", [])
                if r == 1:
                    rep.gallery = gallery.get(rep.student, [])
                teach.append(rep)
    log.teach = sorted(teach, key=lambda t: (t.round, order.get(t.teacher, 0), order.get(t.student, 0)))
    log.timings = {**timings, "evaluate": float(np.mean([sum(metrics[p][r].get("evaluate_seconds", 0.0)
                                                                 for r in range(rounds + 1)) for p in ids]))}
    missing = {p: first[p]["missing"] for p in ids}
    return Experiment(cfg, kinds, missing, log, wall, tuple(first[ids[0]]["classes"]))


def wire_summary(metrics: dict[str, dict[int, dict]], rounds: int) -> dict:
    ids = sorted(metrics, key=lambda p: metrics[p][0]["part"])
    wire = [metrics[p][rounds].get("wire", {}) for p in ids]
    sent = [w.get("bytes_sent", 0) for w in wire]
    payload = sum(w.get("payload_bytes", 0) for w in wire)
    return {
        "what": "bytes_sent: serialized gRPC messages each peer sent (model chunks served, example chunks pushed, "
                "control); payload_bytes: model arrays pulled plus example arrays pushed, all peers",
        "peers": ids,
        "bytes_sent": sent,
        "payload_bytes": payload,
        "overhead": round(sum(sent) / payload, 4) if payload else None,
        "refused": sum(w.get("refused", 0) for w in wire),
    }


def _write_results(exp, metrics, rounds: int, out: Path, quiet: bool) -> dict:
    from peer.report import staged_output, summarise, table, write_figures, write_json

    summary = summarise(exp)
    summary["wire"] = wire_summary(metrics, rounds)
    summary["transport"] = "grpc"
    with staged_output(out) as stage:
        write_json(stage / "results.json", summary)
        write_figures(exp, summary, stage)
    if not quiet:
        print(table(summary))
        w = summary["wire"]
        print(f"wire: {sum(w['bytes_sent'])} bytes sent for {w['payload_bytes']} bytes of payload "
              f"({w['overhead']}x)")
        print(f"results: {out / 'results.json'}")
    return summary


# -- commands -----------------------------------------------------------------------------------
def cmd_certs(args) -> int:
    from peer.tls import make_certs

    names = [n.strip() for n in args.names.split(",") if n.strip()]
    if args.peers < 0:
        raise UsageError(f"--peers must be >= 0, got {args.peers}")
    if args.peers:
        names = ["coordinator"] + [f"peer-{k}" for k in range(args.peers)] + names
    if not names:
        raise UsageError("name no certificates: give --names a,b,... or --peers N")
    hosts = [h.strip() for h in args.hosts.split(",") if h.strip()]
    written = make_certs(Path(args.out), list(dict.fromkeys(names)), hosts=hosts)
    print(f"wrote {Path(args.out) / 'ca.pem'} and {len(written) - 1} certificates to {args.out}")
    return 0


def cmd_server(args) -> int:
    from server.coordinator import Coordinator, serve_coordinator

    if args.rounds < 0 or args.min_peers < 1 or args.round_deadline <= 0:
        raise UsageError("--rounds must be >= 0, --min-peers >= 1 and --round-deadline > 0")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    coordinator = Coordinator(_security("coordinator", args), args.rounds, args.min_peers, args.round_deadline)
    server, port = serve_coordinator(coordinator, args.listen)
    print(f"coordinator listening on {args.listen.rsplit(':', 1)[0]}:{port}", flush=True)
    try:
        coordinator.finished.wait()
        exp = experiment_from_metrics(coordinator.metrics, args.rounds, coordinator.wall_seconds(),
                                      coordinator.timings())
        _write_results(exp, coordinator.metrics, args.rounds, out, quiet=False)
    finally:
        server.stop(grace=5)
    return 0


def cmd_peer(args) -> int:
    import torch

    from peer.cli import DEMO_OPTIONS, with_data
    from peer.experiment import ExperimentConfig
    from peer.node import Node, NodeConfig

    if args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    static = {}
    if str(args.peers).isdigit():
        n = int(args.peers)
    else:
        static = _peer_list(args.peers)
        n = len(static)
    if not static and not args.coordinator:
        raise UsageError("give --coordinator HOST:PORT or a static --peers id=host:port,...")
    if static and args.coordinator:
        raise UsageError("give --coordinator or a static --peers list, not both")
    knobs = {name: getattr(args, name) for name, _ in DEMO_OPTIONS if name != "peers"}
    knobs, data = with_data({**knobs, "peers": n}, set(getattr(args, "_given", ())))
    cfg = ExperimentConfig(**knobs)
    peer_id = args.id or f"peer-{args.part}"
    from peer.learners import learner_kinds

    if args.learner and args.learner not in learner_kinds():
        raise UsageError(f"unknown --learner {args.learner!r}; choose from {', '.join(learner_kinds())}")
    if static and peer_id not in static:
        raise UsageError(f"the static --peers list does not name this peer ({peer_id})")
    if args.listen.rsplit(":", 1)[0] in ("0.0.0.0", "[::]", "") and not args.advertise:
        raise UsageError(f"--listen {args.listen} is not an address other peers can reach; give --advertise HOST:PORT")
    node = Node(NodeConfig(cfg, args.part, Path(args.state_dir), args.id, args.listen, args.advertise,
                           args.coordinator, static, args.learner, args.round_deadline),
                _security(peer_id, args), data=data)
    print(f"{node.id} serving on {node.address}", flush=True)
    try:
        node.run()
    finally:
        node.stop()
    print(f"{node.id} done: {node.wire()}", flush=True)
    return 0


def cmd_launch(args) -> int:
    from peer.cli import DEMO_OPTIONS, with_data
    from peer.experiment import ExperimentConfig, peer_feature_sets, peer_ids
    from peer.tls import Security, make_certs
    from server.coordinator import Coordinator, serve_coordinator

    if args.threads < 1 or args.round_deadline <= 0:
        raise UsageError("--threads must be >= 1 and --round-deadline > 0")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    values, data = with_data({name: getattr(args, name) for name, _ in DEMO_OPTIONS}, set(args._given))
    cfg = ExperimentConfig(**values)
    if data is None:
        from peer.data import find_data_dir

        find_data_dir(cfg.data_dir)  # fail here, once, rather than in every peer
    else:
        peer_feature_sets(cfg, data[0])  # --peer-features refused here, once
    tmp = None
    if args.state_dir:
        state = Path(args.state_dir)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="ckd-launch-")
        state = Path(tmp.name)
    state.mkdir(parents=True, exist_ok=True)
    ids = peer_ids(cfg.peers)
    if args.insecure:
        security = Security("coordinator")
    else:
        make_certs(state / "certs", ["coordinator"] + ids)
        security = Security.from_dir("coordinator", state / "certs", False)
    coordinator = Coordinator(security, cfg.rounds, cfg.peers, args.round_deadline)
    server, port = serve_coordinator(coordinator, "127.0.0.1:0")
    procs: list[subprocess.Popen] = []
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    env = {k: v for k, v in env.items() if not (k.startswith("CKD_") and k != "CKD_DATA_DIR")}
    try:
        for k, pid in enumerate(ids):
            cmd = [sys.executable, "-m", "peer.cli", "peer", "--part", str(k), "--peers", str(cfg.peers),
                   "--coordinator", f"127.0.0.1:{port}", "--listen", "127.0.0.1:0",
                   "--state-dir", str(state / pid), "--threads", str(args.threads)]
            for name, _ in DEMO_OPTIONS:
                value = getattr(cfg, name)
                if name != "peers" and value is not None:
                    cmd += ["--" + name.replace("_", "-"), str(value)]
            cmd += ["--insecure"] if args.insecure else ["--certs", str(state / "certs")]
            log = open(state / f"{pid}.log", "w")
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                          start_new_session=True))
            log.close()
        if not args.quiet:
            print(f"coordinator on 127.0.0.1:{port}, {len(procs)} peers, state in {state}", flush=True)
        while not coordinator.finished.wait(timeout=0.5):
            for pid, p in zip(ids, procs):
                if p.poll() is not None and p.returncode != 0:
                    tail = (state / f"{pid}.log").read_text().strip().splitlines()[-1:]
                    raise UsageError(f"{pid} exited with code {p.returncode}: {' '.join(tail)} "
                                     f"(log {state / f'{pid}.log'}); nothing written")
        for p in procs:
            p.wait(timeout=120)
        exp = experiment_from_metrics(coordinator.metrics, cfg.rounds, coordinator.wall_seconds(),
                                      coordinator.timings(), {p: state / p for p in ids})
        _write_results(exp, coordinator.metrics, cfg.rounds, out, args.quiet)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        server.stop(grace=1)
        if tmp is not None:
            tmp.cleanup()
    return 0


COMMANDS = {"server": cmd_server, "peer": cmd_peer, "certs": cmd_certs, "launch": cmd_launch}
