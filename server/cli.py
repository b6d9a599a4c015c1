"""The `ckd` command: `demo` (every peer in this process), `server` (the coordinator of a gRPC
run), `launch` (a coordinator and N peer processes on loopback), and the peer-side `peer` and
`certs`. Every option can also be set by an environment variable CKD_<OPTION>; flags win."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from peer.cli import NET_HELP, HelpFormatter, add_peer_commands, run_command, security, with_data
from peer.config import (
    ExperimentConfig,
    add_experiment_option,
    add_experiment_options,
    add_option,
    from_args,
    parse_rounds,
    to_argv,
)
from peer.errors import UsageError

MAKEUP_HELP = (
    "make-up rounds at most, after the rounds asked, for peers skipped as students before (slower than "
    "--round-deadline): only they are taught and retrain, the others teach and keep their models; 0: none"
)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Any]]:
    parser = argparse.ArgumentParser(
        prog="ckd",
        formatter_class=HelpFormatter,
        description="ckd: cooperative knowledge distillation between peers that keep their data private.\n"
        "Only model weights and synthetic examples (counterfactuals) ever leave a peer.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        formatter_class=HelpFormatter,
        help="run all peers in this process on Fashion-MNIST (fmnist-10 by default)",
        description="Run a whole CKD experiment in one process: split Fashion-MNIST among peers, train each\n"
        "locally, then for each round every peer teaches every other one with counterfactuals\n"
        "and all retrain. Writes results.json, accuracy.png and counterfactuals.png to --out.\n"
        "Defaults are the reference experiment fmnist-10 (10 peers, peer k never sees class k).",
    )
    add_experiment_options(demo)
    add_option(demo, "out", "runs/demo", "output directory (replaced only when the run succeeds)")
    add_option(demo, "threads", 1, "torch CPU threads (1: the numbers of `ckd launch`, one thread a peer)")
    add_option(
        demo,
        "workers",
        2,
        "peers trained, and teachers teaching, at once (threads of this process; the results are the same "
        "for any number)",
    )
    demo.add_argument("--quiet", action="store_true", help="no progress bars")

    srv = sub.add_parser(
        "server",
        formatter_class=HelpFormatter,
        help="run the coordinator of a gRPC run",
        description="The coordinator: peers register with it, wait at its round barrier and "
        "report metrics;\nit never sees data or weights. " + NET_HELP + ".",
    )
    add_option(srv, "listen", "127.0.0.1:50051", "address to listen on")
    add_experiment_option(srv, "rounds")
    add_experiment_option(srv, "max_rounds")
    add_option(srv, "min_peers", 2, "peers that must register before the run starts")
    add_option(srv, "round_deadline", 600.0, "seconds a barrier waits for slow peers before it skips them")
    add_option(srv, "makeup_rounds", 1, MAKEUP_HELP)
    add_option(srv, "out", "runs/server", "output directory for results.json and accuracy.png")
    add_option(srv, "expect_peers", "", "comma-separated peer names; when given, every other name is refused")
    add_option(
        srv,
        "state_dir",
        "",
        "keep the run's state here (peers, barriers, metrics); started again on it, the server goes on "
        "where it stopped (default: none, a restart loses the run)",
    )
    add_option(srv, "idle_timeout", 1800.0, "seconds without a call from any peer after which the server gives up")
    add_option(
        srv, "heartbeat_timeout", 30.0, "seconds without a heartbeat after which a barrier no longer waits for a peer"
    )
    from peer.cli import security_options

    security_options(srv)

    launch = sub.add_parser(
        "launch",
        formatter_class=HelpFormatter,
        help="run a whole experiment as a coordinator and N peer processes on loopback",
        description="Start a coordinator and one process per peer on this machine, over "
        "gRPC with mutual TLS,\nrun the experiment and write results.json, "
        "accuracy.png and counterfactuals.png like `ckd demo`.",
    )
    add_experiment_options(launch)
    add_option(launch, "out", "runs/launch", "output directory (replaced only when the run succeeds)")
    add_option(launch, "state_dir", "", "peers' state directories and logs (default: a temporary directory)")
    add_option(launch, "round_deadline", 600.0, "seconds a barrier waits for slow peers")
    add_option(launch, "makeup_rounds", 1, MAKEUP_HELP)
    add_option(launch, "idle_timeout", 1800.0, "seconds without a call from any peer after which the run is stopped")
    add_option(launch, "threads", 1, "torch CPU threads per peer process")
    launch.add_argument("--insecure", action="store_true", help="plaintext gRPC between the processes")
    launch.add_argument("--quiet", action="store_true", help="no progress messages")
    commands = {"demo": cmd_demo, "server": cmd_server, "launch": cmd_launch, **add_peer_commands(sub)}
    return parser, commands


def _out_dir(path: str) -> Path:
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    return out


def cmd_demo(args: argparse.Namespace) -> int:
    from peer.data.fashion import load_fashion_mnist
    from peer.inprocess import run_experiment
    from peer.process import configure_process
    from server.results import write_results

    if args.threads < 1 or args.workers < 1:
        raise UsageError(f"--threads and --workers must be >= 1, got {args.threads} and {args.workers}")
    configure_process(args.threads)
    out = _out_dir(args.out)
    values, data = with_data(from_args(args), set(getattr(args, "_given", ())))
    cfg = ExperimentConfig(**values)
    data = data or load_fashion_mnist(cfg.data_dir)
    exp = run_experiment(cfg, quiet=args.quiet, data=data, workers=args.workers)
    write_results(out, exp, "in-process")
    return 0


def cmd_server(args: argparse.Namespace) -> int:
    from peer.grpc.tls import check_name
    from server.coordinator import Coordinator, serve_coordinator
    from server.results import write_results

    rounds = parse_rounds(args.rounds)
    waits = (args.round_deadline, args.idle_timeout, args.heartbeat_timeout)
    if args.max_rounds < 1 or args.min_peers < 1 or min(waits) <= 0 or args.makeup_rounds < 0:
        raise UsageError(
            "--max-rounds and --min-peers must be >= 1, --makeup-rounds >= 0, --round-deadline, --idle-timeout "
            "and --heartbeat-timeout > 0"
        )
    out = _out_dir(args.out)
    expected = {check_name(n.strip()) for n in args.expect_peers.split(",") if n.strip()} or None
    if expected is not None and len(expected) < args.min_peers:
        raise UsageError(f"--expect-peers names {len(expected)} peers, fewer than --min-peers {args.min_peers}")
    coordinator = Coordinator(
        security("coordinator", args),
        rounds,
        args.min_peers,
        args.round_deadline,
        args.heartbeat_timeout,
        expected=expected,
        state_dir=Path(args.state_dir) if args.state_dir else None,
        max_rounds=args.max_rounds,
        makeup_rounds=args.makeup_rounds,
    )
    server, port = serve_coordinator(coordinator, args.listen)
    print(f"coordinator listening on {args.listen.rsplit(':', 1)[0]}:{port}", flush=True)
    try:
        wait_finished(coordinator, args.idle_timeout)
        wait_reports(coordinator, args.round_deadline)
        exp, extra = coordinator.results()
        write_results(out, exp, "grpc", extra)
    finally:
        server.stop(grace=5)
    return 0


def wait_finished(coordinator, idle_timeout: float, check=None) -> None:
    """Until the run's last barrier released; a UsageError when no peer called for `idle_timeout`
    seconds. `check()` runs every half second (e.g. to notice a peer process that failed)."""
    while not coordinator.finished.wait(timeout=0.5):
        if check is not None:
            check()
        lost = coordinator.given_up()
        if lost is not None:
            raise UsageError(f"{lost}; nothing written")
        if coordinator.idle_seconds() > idle_timeout:
            done = sorted({r for rounds in coordinator.metrics.values() for r in rounds})
            raise UsageError(
                f"no peer called the coordinator for {idle_timeout:g} s (rounds reported: "
                f"{', '.join(map(str, done)) or 'none'}); nothing written"
            )


def wait_reports(coordinator, grace: float, check=None) -> None:
    """After the run's last barrier: up to `grace` seconds for the peers still alive that have not
    reported every round or not left (heard the run's end; one slower than the last round's deadline
    reports after the run went on without it). A peer that never reports is left out of the results
    and named there (`incomplete`)."""
    start = time.monotonic()
    told = False
    while (late := coordinator.missing_reports()) and time.monotonic() < start + grace:
        # every peer leaves within moments of the last barrier's reply: say so only of a real wait
        if not told and time.monotonic() > start + 2.0:
            print(
                f"waiting up to {grace:g} s for {', '.join(late)} to report and hear the run's end",
                file=sys.stderr,
                flush=True,
            )
            told = True
        if check is not None:
            check()
        time.sleep(0.2)


def _peer_command(
    cfg: ExperimentConfig, k: int, pid: str, port: int, state: Path, args: argparse.Namespace
) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "peer.cli",
        "peer",
        "--part",
        str(k),
        "--peers",
        str(cfg.peers),
        "--coordinator",
        f"127.0.0.1:{port}",
        "--listen",
        "127.0.0.1:0",
        "--state-dir",
        str(state / pid),
        "--threads",
        str(args.threads),
        *to_argv(cfg, skip=("peers",)),
    ]
    return cmd + (["--insecure"] if args.insecure else ["--certs", str(state / "certs")])


def cmd_launch(args: argparse.Namespace) -> int:
    from peer.experiment import peer_feature_sets, peer_ids
    from peer.grpc.tls import Security, make_certs
    from server.coordinator import Coordinator, serve_coordinator
    from server.results import write_results

    if args.threads < 1 or args.round_deadline <= 0 or args.idle_timeout <= 0 or args.makeup_rounds < 0:
        raise UsageError("--threads must be >= 1, --makeup-rounds >= 0, --round-deadline and --idle-timeout > 0")
    out = _out_dir(args.out)
    values, data = with_data(from_args(args), set(args._given))
    cfg = ExperimentConfig(**values)
    if data is None:
        from peer.data.fashion import find_data_dir

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
        sec = Security("coordinator")
    else:
        make_certs(state / "certs", ["coordinator"] + ids)
        sec = Security.from_dir("coordinator", state / "certs", False)
    coordinator = Coordinator(
        sec,
        cfg.rounds,
        cfg.peers,
        args.round_deadline,
        expected=set(ids),
        max_rounds=cfg.max_rounds,
        makeup_rounds=args.makeup_rounds,
    )
    server, port = serve_coordinator(coordinator, "127.0.0.1:0")
    procs: list[subprocess.Popen] = []
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    env = {k: v for k, v in env.items() if not (k.startswith("CKD_") and k != "CKD_DATA_DIR")}
    try:
        for k, pid in enumerate(ids):
            with open(state / f"{pid}.log", "w") as log:
                procs.append(
                    subprocess.Popen(
                        _peer_command(cfg, k, pid, port, state, args),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=env,
                        start_new_session=True,
                    )
                )
        if not args.quiet:
            print(f"coordinator on 127.0.0.1:{port}, {len(procs)} peers, state in {state}", flush=True)

        def check() -> None:
            for pid, p in zip(ids, procs):
                if p.poll() is not None and p.returncode != 0:
                    tail = (state / f"{pid}.log").read_text().strip().splitlines()[-1:]
                    raise UsageError(
                        f"{pid} exited with code {p.returncode}: {' '.join(tail)} "
                        f"(log {state / f'{pid}.log'}); nothing written"
                    )

        wait_finished(coordinator, args.idle_timeout, check)
        wait_reports(coordinator, args.round_deadline, check)
        for p in procs:
            p.wait(timeout=120)
        exp, extra = coordinator.results({p: state / p for p in ids})
        write_results(out, exp, "grpc", extra, quiet=args.quiet)
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


def main(argv: list[str] | None = None) -> int:
    parser, commands = build_parser()
    return run_command(commands, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
