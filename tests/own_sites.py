"""Three sites that each hold their own small table, for runs of `ckd server` and `ckd peer` processes.

Each site has its own columns (overlapping subsets of four measurements, one site a categorical
column too), its own label column and its own spelling of the classes, which --class-map turns
into the shared names benign, malignant and normal. site-b has no `normal` rows and names the
class with --classes to learn it from the others. `run_sites` starts the coordinator and the
peers, each behind an optional command prefix (e.g. `ip netns exec NS`), and returns results.json.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ("benign", "malignant", "normal")
MEASURES = ("radius", "texture", "area", "smoothness")
CENTRES = np.array([[0.0, 0.0, 0.0, 0.0], [2.5, 1.5, 2.0, -1.0], [-1.5, 2.5, -1.0, 2.0]])
# the experiment every peer runs (seeds included); each site adds its own data options
RUN = [
    "--learners",
    "mlp",
    "--epochs",
    "30",
    "--retrain-epochs",
    "10",
    "--rounds",
    "1",
    "--seed",
    "5",
    "--threads",
    "1",
]


@dataclass(frozen=True)
class Site:
    id: str
    columns: tuple[str, ...]  # measurements this site records
    label: str  # its label column
    spelling: dict[str, str]  # shared class name -> this site's spelling
    rows: int
    has: tuple[str, ...] = CLASSES  # classes in its rows
    ward: bool = False  # a categorical column
    test_rows: int = 0  # > 0: a test file of its own (--test-data, every class), else 20% held out

    def class_map(self) -> str:
        return ",".join(f"{mine}={shared}" for shared, mine in self.spelling.items() if mine != shared)

    def data_args(self, path: Path) -> list[str]:
        args = ["--data", str(path), "--label", self.label]
        if self.class_map():
            args += ["--class-map", self.class_map()]
        missing = [c for c in CLASSES if c not in self.has]
        if missing:
            args += ["--classes", ",".join(missing)]
        return args + (["--test-data", str(path.with_name(f"{self.id}-test.csv"))] if self.test_rows else [])


SITES = (
    Site("site-a", ("radius", "texture", "area"), "diagnosis", {"benign": "B", "malignant": "M", "normal": "N"}, 150),
    Site(
        "site-b",
        ("texture", "area", "smoothness"),
        "outcome",
        {c: c for c in CLASSES},
        120,
        has=("benign", "malignant"),
        test_rows=60,
    ),
    Site(
        "site-c",
        ("smoothness", "radius", "area"),
        "Diagnosis",
        {"benign": "Benign", "malignant": "Malignant", "normal": "Normal"},
        130,
        ward=True,
    ),
)


def write_sites(directory: Path, seed: int = 0) -> dict[str, Path]:
    """One CSV per site, its own columns in its own order; returns site id -> path."""
    rng = np.random.default_rng(seed)
    paths = {}
    directory.mkdir(parents=True, exist_ok=True)
    for site in SITES:
        paths[site.id] = directory / f"{site.id}.csv"
        _write_table(paths[site.id], site, [CLASSES.index(c) for c in site.has], site.rows, rng)
        if site.test_rows:  # its own test file holds the class its training data lacks
            _write_table(directory / f"{site.id}-test.csv", site, list(range(len(CLASSES))), site.test_rows, rng)
    return paths


def _write_table(path: Path, site: Site, allowed: list[int], rows: int, rng: np.random.Generator) -> None:
    y = rng.choice(allowed, rows)
    x = CENTRES[y] + rng.normal(0, 1.1, (rows, len(MEASURES)))
    lines = [",".join([*site.columns, *(["ward"] if site.ward else []), site.label])]
    for row, c in zip(x, y):
        cells = [f"{row[MEASURES.index(m)]:.3f}" for m in site.columns]
        if site.ward:
            cells.append(str(rng.choice(["east", "west", "north"])))
        lines.append(",".join([*cells, site.spelling[CLASSES[c]]]))
    path.write_text("\n".join(lines) + "\n")


def env() -> dict[str, str]:
    """The environment of a ckd process: this checkout, one thread, no CKD_* settings of the caller."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("CKD_")}
    return {**base, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def make_host_certs(tmp: Path, hosts: list[str]) -> dict[str, Path]:
    """`ckd certs` once, for the coordinator and every site (naming `hosts` too), then each machine's
    copy: the CA certificate, its own key and certificate (never ca.key). Returns name -> its directory."""
    made = tmp / "certs-made"
    names = ["coordinator", *(s.id for s in SITES)]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "server.cli",
            "certs",
            "--out",
            str(made),
            "--names",
            ",".join(names),
            *(["--hosts", ",".join(hosts)] if hosts else []),
        ],
        env=env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    copies = {}
    for name in names:
        copies[name] = tmp / "hosts" / name / "certs"
        copies[name].mkdir(parents=True)
        for f in ("ca.pem", f"{name}.pem", f"{name}.key"):
            shutil.copy2(made / f, copies[name] / f)
    return copies


def peer_argv(site: Site, data: Path, coordinator: str, listen: str, certs: Path, state: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "peer.cli",
        "peer",
        "--id",
        site.id,
        *site.data_args(data),
        *RUN,
        "--coordinator",
        coordinator,
        "--listen",
        listen,
        "--certs",
        str(certs),
        "--state-dir",
        str(state),
        "--connect-timeout",
        "60",
    ]


def run_sites(
    tmp: Path,
    data: dict[str, Path],
    certs: dict[str, Path],
    coordinator_listen: str,
    coordinator_address: str | None,
    peer_listen: dict[str, str],
    prefix: dict[str, list[str]] | None = None,
    timeout: float = 600.0,
    coordinator_args: Sequence[str] = (),
    watch: Callable[[], None] | None = None,
) -> dict:
    """`ckd server` and one `ckd peer` per site, each started with its prefix (e.g. `ip netns exec NS`);
    returns results.json. `coordinator_address` None: read the port the server printed (it listens on port 0).
    `coordinator_args` are added to `ckd server`'s; `watch()` is called every 0.2 s while the run goes on."""

    def peers(address: str) -> dict[str, list[str]]:
        return {
            site.id: peer_argv(
                site, data[site.id], address, peer_listen[site.id], certs[site.id], tmp / "hosts" / site.id / "state"
            )
            for site in SITES
        }

    return run_coordinator_and_peers(
        tmp,
        certs["coordinator"],
        1,
        len(SITES),
        peers,
        coordinator_listen,
        coordinator_address,
        prefix,
        timeout,
        coordinator_args,
        watch,
    )


def run_coordinator_and_peers(
    tmp: Path,
    coordinator_certs: Path,
    rounds: int,
    min_peers: int,
    peers: Callable[[str], dict[str, list[str]]],
    coordinator_listen: str = "127.0.0.1:0",
    coordinator_address: str | None = None,
    prefix: dict[str, list[str]] | None = None,
    timeout: float = 600.0,
    coordinator_args: Sequence[str] = (),
    watch: Callable[[], None] | None = None,
) -> dict:
    """`ckd server` (out directory tmp/out, logs in tmp/logs) and the peers `peers(address)` names (name
    -> command line, given the coordinator's address), `min_peers` of them, each started with its
    prefix; waits for all to exit 0 and returns results.json. `coordinator_address` None: read the
    port the server printed (it listens on port 0). `coordinator_args`: more options of `ckd server`;
    `watch()`: called every 0.2 s while the processes run."""
    prefix = prefix or {}
    out = tmp / "out"
    logs = tmp / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs: dict[str, subprocess.Popen] = {}
    with open(logs / "coordinator.log", "w") as server_log:
        procs["coordinator"] = subprocess.Popen(
            [
                *prefix.get("coordinator", []),
                sys.executable,
                "-m",
                "server.cli",
                "server",
                "--listen",
                coordinator_listen,
                "--rounds",
                str(rounds),
                "--min-peers",
                str(min_peers),
                "--round-deadline",
                "120",
                "--certs",
                str(coordinator_certs),
                "--out",
                str(out),
                *coordinator_args,
            ],
            stdout=server_log,
            stderr=subprocess.STDOUT,
            env=env(),
        )
    try:
        address = coordinator_address or _printed_address(logs / "coordinator.log", procs["coordinator"])
        argvs = peers(address)
        assert len(argvs) == min_peers, sorted(argvs)
        for name, argv in argvs.items():
            with open(logs / f"{name}.log", "w") as log:
                procs[name] = subprocess.Popen(
                    [*prefix.get(name, []), *argv], stdout=log, stderr=subprocess.STDOUT, env=env()
                )
        end = time.monotonic() + timeout
        while any(p.poll() is None for p in procs.values()):
            failed = {n: p.returncode for n, p in procs.items() if p.poll() not in (None, 0)}
            assert not failed, f"{failed} exited with an error:\n{_logs(logs)}"
            assert time.monotonic() < end, f"still running after {timeout} s:\n{_logs(logs)}"
            if watch is not None:
                watch()
            time.sleep(0.2)
        failed = {n: p.returncode for n, p in procs.items() if p.returncode != 0}
        assert not failed, f"{failed} exited with an error:\n{_logs(logs)}"
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    return json.loads((out / "results.json").read_text())


def _printed_address(log: Path, proc: subprocess.Popen, timeout: float = 120.0) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = re.search(r"coordinator listening on (\S+)", log.read_text())
        if found:
            return found.group(1)
        assert proc.poll() is None, f"ckd server exited: {log.read_text()}"
        time.sleep(0.1)
    raise AssertionError(f"ckd server printed no address: {log.read_text()}")


def _logs(directory: Path) -> str:
    return "\n".join(f"--- {f.name}\n{f.read_text()[-1500:]}" for f in sorted(directory.glob("*.log")))


def accuracies(results: dict) -> dict[str, list[float]]:
    return {p["id"]: p["accuracy_by_round"] for p in results["peers"]}
