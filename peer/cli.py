"""The peer-side commands: `ckd peer` (one peer as a gRPC service) and `ckd certs`.

Every option can also be set by an environment variable CKD_<OPTION>; flags win. The
experiment options come from peer.config, declared there once.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from peer.config import ExperimentConfig, add_experiment_options, add_option, from_args, with_privacy
from peer.errors import UsageError

NET_HELP = "mutual TLS by default (--certs DIR from `ckd certs`); plaintext only with --insecure"

# With --data, options the user did not set take these values instead (fmnist-10's suit 60,000 images).
DATA_DEFAULTS = {"peers": 3, "split": "iid"}
TABLE_DEFAULTS = {"learners": "mlp", "epochs": 40, "retrain_epochs": 20}  # tables are small: more epochs


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def with_data(values: dict[str, Any], given: set[str]) -> tuple[dict[str, Any], tuple | None]:
    """The --privacy preset's knobs where not given. With --data: load it (refused here, once, if
    unreadable) and fill the options the user did not set from DATA_DEFAULTS (and TABLE_DEFAULTS for
    a table); returns (values, (train, test)). Without: (values, None), Fashion-MNIST being loaded by
    whoever needs it."""
    from peer.experiment import load_data

    values = with_privacy(values, given)
    if not values.get("data"):
        return values, None
    data = load_data(ExperimentConfig(**{**values, "peers": 2, "learners": "mlp"}))
    defaults = {**DATA_DEFAULTS, **(TABLE_DEFAULTS if data[0].tabular else {})}
    return {**values, **{k: v for k, v in defaults.items() if k not in given}}, data


def given_options(argv: list[str]) -> set[str]:
    """Options the user set, by flag or environment variable."""
    flags = {a[2:].split("=")[0].replace("-", "_") for a in argv if a.startswith("--")}
    env = {k[4:].lower() for k in os.environ if k.startswith("CKD_")}
    return flags | env


def security_options(parser: argparse.ArgumentParser) -> None:
    add_option(parser, "certs", None, "directory with ca.pem and this process's NAME.pem, NAME.key")
    parser.add_argument("--insecure", action="store_true", help="plaintext gRPC, no TLS (only when asked)")


def security(name: str, args: argparse.Namespace):
    from peer.grpc.tls import Security

    return Security.from_dir(name, Path(args.certs) if args.certs else None, args.insecure)


def add_peer_commands(sub: Any, formatter: type = HelpFormatter) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add `ckd peer` and `ckd certs` to a sub-parser set; returns command name -> function."""
    peer = sub.add_parser(
        "peer",
        formatter_class=formatter,
        help="run one peer as a gRPC service",
        description="One peer: loads its data (its own --data file, or --part K of a shared "
        "split), serves\nits models and inbox over gRPC, and takes part in the rounds. " + NET_HELP + ".",
    )
    add_experiment_options(peer, skip=("peers",))
    add_option(
        peer,
        "peers",
        "10",
        "number of parts of the split, or a static peer list id=host:port,... (then no coordinator)",
    )
    add_option(
        peer,
        "part",
        0,
        "which part of a shared split is this peer's private data (simulations); with "
        "--data and no --part, the whole of --data is this peer's own data",
    )
    add_option(peer, "id", "", "peer id, also its certificate name (default peer-PART; needed on own data)")
    add_option(peer, "learner", "", "this peer's learner kind (default: from --learners)")
    add_option(peer, "listen", "127.0.0.1:0", "address to listen on (port 0: any free port)")
    add_option(peer, "advertise", "", "host:port other peers use to reach this one (default: the listen address)")
    add_option(peer, "coordinator", "", "host:port of `ckd server`")
    add_option(peer, "round_deadline", 600.0, "without a coordinator: seconds to wait for slow peers")
    add_option(peer, "state_dir", "state/peer", "model checkpoints and the SQLite store of received examples")
    add_option(peer, "threads", 1, "torch CPU threads")
    add_option(
        peer, "connect_timeout", 30.0, "seconds to wait at start for the coordinator to answer, then exit with an error"
    )
    security_options(peer)

    certs = sub.add_parser(
        "certs",
        formatter_class=formatter,
        help="make a CA and certificates for peers",
        description="A CA (kept if DIR has one) and a key and certificate per name; the name "
        "is the\ncertificate's common name, so a peer's id is its identity.",
    )
    add_option(certs, "out", "certs", "output directory")
    add_option(certs, "names", "", "comma-separated names, e.g. coordinator,peer-0,peer-1")
    add_option(certs, "peers", 0, "also make coordinator and peer-0 .. peer-(N-1)")
    add_option(
        certs,
        "hosts",
        "",
        "comma-separated IP addresses or DNS names added to every certificate made, "
        "for servers\nclients reach by address (e.g. a Flower SuperLink at 10.0.0.5)",
    )
    add_option(
        certs,
        "revoke",
        "",
        "comma-separated names whose certificates in --out go on its crl.pem, the "
        "CA-signed\nrevocation list every peer and the coordinator load (copy it to "
        "each, then restart them)",
    )
    return {"peer": cmd_peer, "certs": cmd_certs}


def peer_list(text: str) -> dict[str, str]:
    out = {}
    for item in text.split(","):
        pid, sep, addr = item.strip().partition("=")
        if not sep or not pid or ":" not in addr:
            raise UsageError(f"bad --peers entry {item!r}; write id=host:port,id=host:port,...")
        out[pid] = addr
    return out


def cmd_certs(args: argparse.Namespace) -> int:
    from peer.grpc.tls import make_certs, revoke

    revoked = [n.strip() for n in args.revoke.split(",") if n.strip()]
    if revoked:
        if args.names or args.peers:
            raise UsageError("give either names to make certificates for or --revoke, not both")
        path = revoke(Path(args.out), revoked)
        print(f"revoked {', '.join(revoked)} in {path}; copy it to every peer and the coordinator and restart them")
        return 0
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


def cmd_peer(args: argparse.Namespace) -> int:
    """One peer. Everything that can be wrong at start (flags, addresses, certificate files, the data,
    a coordinator that does not answer) is a one-line error here, before round 0."""
    from peer.grpc.node import Node, NodeConfig, check_address, wait_for_coordinator
    from peer.learners import learner_kinds

    if args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    if args.connect_timeout <= 0:
        raise UsageError(f"--connect-timeout must be > 0, got {args.connect_timeout}")
    given = set(getattr(args, "_given", ()))
    own = bool(args.data) and "part" not in given  # --data without --part: the whole file is this peer's
    static = {}
    if str(args.peers).isdigit():
        n = int(args.peers)
    else:
        static = peer_list(args.peers)
        n = len(static)
    if not static and not args.coordinator:
        raise UsageError("give --coordinator HOST:PORT or a static --peers id=host:port,...")
    if static and args.coordinator:
        raise UsageError("give --coordinator or a static --peers list, not both")
    if args.coordinator:
        check_address(args.coordinator, "--coordinator")
    if own and not args.id:
        raise UsageError("a peer on its own data (--data without --part) needs --id NAME, the name in its certificate")
    peer_id = args.id or f"peer-{args.part}"
    if args.learner and args.learner not in learner_kinds():
        raise UsageError(f"unknown --learner {args.learner!r}; choose from {', '.join(learner_kinds())}")
    if static and peer_id not in static:
        raise UsageError(f"the static --peers list does not name this peer ({peer_id})")
    check_address(args.listen, "--listen", any_port=True)
    if args.advertise:
        check_address(args.advertise, "--advertise")
    if args.listen.rsplit(":", 1)[0] in ("0.0.0.0", "[::]", "") and not args.advertise:
        raise UsageError(f"--listen {args.listen} is not an address other peers can reach; give --advertise HOST:PORT")
    sec = security(peer_id, args)  # certificate files checked before the data is read
    from peer.process import configure_process

    configure_process(args.threads)
    knobs, data = with_data(from_args(args, peers=n), given)
    cfg = ExperimentConfig(**knobs)
    if args.coordinator:
        wait_for_coordinator(sec, args.coordinator, args.connect_timeout)
    node = Node(
        NodeConfig(
            cfg,
            None if own else args.part,
            Path(args.state_dir),
            args.id,
            args.listen,
            args.advertise,
            args.coordinator,
            static,
            args.learner,
            args.round_deadline,
        ),
        sec,
        data=data,
    )
    print(f"{node.id} serving on {node.address}", flush=True)
    try:
        node.run()
    finally:
        node.stop()
    print(f"{node.id} done: {node.wire()}", flush=True)
    return 0


def run_command(
    commands: dict[str, Callable[[argparse.Namespace], int]], parser: argparse.ArgumentParser, argv: list[str] | None
) -> int:
    """Parse, run the chosen command; a UsageError is one line on stderr and exit code 2."""
    args = parser.parse_args(argv)
    args._given = given_options(sys.argv[1:] if argv is None else argv)
    # gRPC's own log lines (a failed TLS handshake, say) would break the one-line errors; ours say why
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    try:
        return commands[args.command](args)
    except UsageError as exc:
        print(f"ckd: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ckd: interrupted; nothing written", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    """`python -m peer.cli peer|certs ...`: the peer-side commands alone (`ckd` has them all)."""
    parser = argparse.ArgumentParser(prog="ckd", formatter_class=HelpFormatter, description="ckd's peer-side commands.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    return run_command(add_peer_commands(sub), parser, argv)


if __name__ == "__main__":
    sys.exit(main())
