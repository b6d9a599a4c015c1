"""Peers on separate machines, each on its own file: a coordinator and three peers in network
namespaces of their own, joined by veth pairs to a bridge inside a namespace of this test's, on
10.77.0.0/24 with mutual TLS; the run equals the same run on loopback (which runs everywhere), and
so does the run of the same sites as Flower SuperNodes on their own data.

The namespaces need root and `ip netns` (iproute2); that test is skipped otherwise. Nothing is added to the host's own
network: every link, the bridge included, lives in a namespace the test creates, and all of them
are deleted at the end, whatever happened.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from protos.ckd.v1 import coordinator_pb2 as cpb
from tests.fault_runs import audit_stores
from tests.own_sites import CLASSES, SITES, accuracies, make_host_certs, run_sites, write_sites

SUBNET = "10.77.0"
ADDRESSES = {"coordinator": f"{SUBNET}.1", **{s.id: f"{SUBNET}.{11 + k}" for k, s in enumerate(SITES)}}
COORDINATOR_PORT, PEER_PORT = 50051, 50052


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


class Lan:
    """Hosts in network namespaces on one bridge; the bridge is in a namespace of its own."""

    def __init__(self) -> None:
        self.prefix = f"ckd-{secrets.token_hex(3)}"  # unique per run: parallel runs never meet
        self.bridge = f"{self.prefix}-lan"
        self.namespaces: list[str] = []
        self.ports: dict[str, str] = {}  # host name -> its veth port on the bridge

    def start(self) -> None:
        self._add(self.bridge)
        _ip("-n", self.bridge, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.bridge, "link", "set", "br0", "up")

    def _add(self, ns: str) -> None:
        _ip("netns", "add", ns)
        self.namespaces.append(ns)
        _ip("-n", ns, "link", "set", "lo", "up")

    def host(self, name: str, address: str) -> list[str]:
        """A machine called `name` at `address`/24 on the bridge; returns the prefix that runs a command on it."""
        ns = f"{self.prefix}-{name}"
        self._add(ns)
        port = f"v{len(self.namespaces) - 1}"
        # the veth pair is made inside the bridge's namespace with its other end straight in the host's
        _ip("-n", self.bridge, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("-n", self.bridge, "link", "set", port, "master", "br0", "up")
        self.ports[name] = port
        _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        return ["ip", "netns", "exec", ns]

    def link(self, name: str, up: bool) -> None:
        """Unplug host `name` from the bridge (its port down: every packet to or from it is lost), or plug it back."""
        _ip("-n", self.bridge, "link", "set", self.ports[name], "up" if up else "down")

    def close(self) -> None:
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        self.namespaces = []


@pytest.fixture
def lan() -> Iterator[Lan]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (ip netns add); run as root to test separate machines")
    if shutil.which("ip") is None:
        pytest.skip("no `ip` command (Debian's iproute2) to make network namespaces")
    net = Lan()
    try:
        try:
            net.start()
        except RuntimeError as exc:
            pytest.skip(f"cannot make network namespaces here: {exc}")
        yield net
    finally:
        net.close()
        left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert net.prefix not in left, f"namespaces left behind: {left}"


@pytest.fixture(scope="module")
def sites(tmp_path_factory) -> tuple[Path, dict[str, Path], dict[str, Path]]:
    """Each site's CSV, and certificates made once (naming the LAN addresses) and copied to each host."""
    tmp = tmp_path_factory.mktemp("sites")
    return tmp, write_sites(tmp / "data"), make_host_certs(tmp, sorted(ADDRESSES.values()))


@pytest.fixture(scope="module")
def loopback(sites) -> dict:
    """The three sites as processes on one machine: coordinator on port 0, peers on 127.0.0.1:0."""
    tmp, data, certs = sites
    t = time.monotonic()
    results = run_sites(tmp / "loopback", data, certs, "127.0.0.1:0", None, {s.id: "127.0.0.1:0" for s in SITES})
    print(f"loopback: {accuracies(results)} in {time.monotonic() - t:.1f} s")
    return results


def _check_own_data_run(results: dict, transport: str = "grpc") -> None:
    assert results["status"] == "ok" and results["transport"] == transport, results.get("errors")
    assert results["experiment"] == "own-data" and results["classes"] == list(CLASSES)
    assert [p["id"] for p in results["peers"]] == [s.id for s in SITES]
    assert all(p["received"] > 0 for p in results["peers"])
    # the coordinator (the ServerApp) learnt how each peer did on its own test slice, never where its files are
    # nor how its files are laid out (label column, class spellings)
    for key in ("data", "test_data", "data_dir", "label", "class_map", "classes"):
        assert results["config"].get(key) is None, key
    # site-b holds no `normal` rows and named the class with --classes; its own test file has them:
    # it knows none before the round and learns them from the counterfactuals of the others
    site_b = next(p for p in results["peers"] if p["id"] == "site-b")
    assert site_b["missing_classes"] == ["normal"]
    assert site_b["per_class_before"][2] == 0.0 and site_b["per_class_after"][2] > 0.5


@pytest.mark.grpc
def test_peers_on_their_own_files_run_over_grpc(loopback):
    """Own columns, own label column, own class spellings (--class-map), a class one peer lacks."""
    _check_own_data_run(loopback)


@pytest.mark.netns
def test_peers_on_separate_machines_equal_the_loopback_run(lan, sites, loopback, tmp_path):
    _, data, certs = sites
    prefix = {name: lan.host(name, address) for name, address in ADDRESSES.items()}
    coordinator = f"{ADDRESSES['coordinator']}:{COORDINATOR_PORT}"
    t = time.monotonic()
    on_lan = run_sites(
        tmp_path, data, certs, coordinator, coordinator, {s.id: f"{ADDRESSES[s.id]}:{PEER_PORT}" for s in SITES}, prefix
    )
    print(f"separate machines: {accuracies(on_lan)} in {time.monotonic() - t:.1f} s")
    _check_own_data_run(on_lan)
    assert accuracies(on_lan) == accuracies(loopback)
    assert [p["received"] for p in on_lan["peers"]] == [p["received"] for p in loopback["peers"]]
    assert on_lan["wire"]["payload_bytes"] == loopback["wire"]["payload_bytes"]
    # the peers really were apart: each served on its own LAN address
    for site in SITES:
        log = (tmp_path / "logs" / f"{site.id}.log").read_text()
        assert f"serving on {ADDRESSES[site.id]}:{PEER_PORT}" in log, log


class LinkCut:
    """Unplugs `host` from the bridge once the coordinator released the round-1 `published` barrier
    (teaching has begun: every peer is about to pull the others' models), and plugs it back once it
    was out `least` seconds and every other site logged a failed call to it, or after `most` seconds.
    The coordinator must wait for a peer silent that long: its heartbeat timeout is to exceed `most`
    by more than a heartbeat's interval and call timeout (5 s and 10 s), else it releases the round
    without the cut peer and the run ends without its metrics. `watch()` is called while the run goes on."""

    def __init__(self, lan: Lan, host: str, state: Path, logs: Path, least: float = 6.0, most: float = 25.0) -> None:
        self.lan, self.host, self.state, self.logs = lan, host, state, logs
        self.least, self.most = least, most
        self.others = [s.id for s in SITES if s.id != host]
        self.down: float | None = None
        self.seconds: float | None = None  # how long it was out, once back
        self.failed_before: dict[str, list[str]] = {}  # failed calls to `host` logged before the cut
        self.failed_during: dict[str, list[str]] = {}  # ... and by the time the link came back

    def failed_calls(self) -> dict[str, list[str]]:
        """Each other site's log lines of a call to `host` that failed and is tried again."""
        calls = f"(GetModel from|PushExamples to) {self.host} "
        return {
            site: [
                line
                for line in (self.logs / f"{site}.log").read_text().splitlines()
                if re.match(rf"{site}: {calls}.*; retry \d", line)
            ]
            for site in self.others
        }

    def own_failures(self) -> list[str]:
        """`host`'s log lines of its own calls that failed: to the coordinator (tried again), its
        heartbeats, and its calls to the other sites (tried again)."""
        h = re.escape(self.host)
        own = re.compile(
            rf"coordinator \S+: \w+ from {h} failed: .*; retry \d"
            rf"|{h}: heartbeat to \S+ failed"
            rf"|{h}: (GetModel from|PushExamples to) \S+ .*; retry \d"
        )
        return [line for line in (self.logs / f"{self.host}.log").read_text().splitlines() if own.match(line)]

    def watch(self) -> None:
        if self.seconds is not None:
            return
        if self.down is None:
            path = self.state / "coordinator.json"
            barriers = json.loads(path.read_text())["barriers"] if path.exists() else []
            if any((r, stage) == (1, cpb.STAGE_PUBLISHED) for r, stage, _ in barriers):
                self.lan.link(self.host, up=False)
                self.down = time.monotonic()
                self.failed_before = self.failed_calls()
            return
        out = time.monotonic() - self.down
        self.failed_during = self.failed_calls()
        if out >= self.most or (out >= self.least and all(self.failed_during.values())):
            self.lan.link(self.host, up=True)
            self.seconds = out


@pytest.mark.netns
@pytest.mark.faults
def test_a_peer_cut_off_mid_round_finishes_as_the_undisturbed_run(lan, sites, loopback, tmp_path):
    """site-c's link goes down as round 1's teaching begins and comes back seconds later (within
    the round deadline): the calls to it that the cut catches (pulls of its model, pushes to it)
    fail and are retried, site-c's own calls in flight end when keepalive finds their connection
    silent and are retried on a new one, and the run ends as the undisturbed one did, every batch
    acknowledged stored once, nobody skipped."""
    _, data, certs = sites
    prefix = {name: lan.host(name, address) for name, address in ADDRESSES.items()}
    coordinator = f"{ADDRESSES['coordinator']}:{COORDINATOR_PORT}"
    state = tmp_path / "coordinator-state"
    cut = LinkCut(lan, "site-c", state, tmp_path / "logs")
    t = time.monotonic()
    results = run_sites(
        tmp_path,
        data,
        certs,
        coordinator,
        coordinator,
        {s.id: f"{ADDRESSES[s.id]}:{PEER_PORT}" for s in SITES},
        prefix,
        # a cut of up to 25 s plus the heartbeat that was due: well inside 90 s, never taken for a lost peer
        coordinator_args=["--state-dir", str(state), "--heartbeat-timeout", "90"],
        watch=cut.watch,
    )
    print(f"site-c cut off for {cut.seconds} s: {accuracies(results)} in {time.monotonic() - t:.1f} s")
    assert cut.seconds is not None, "the link never went down: the round-1 barrier was not seen released"
    # no call to site-c had failed before the cut
    assert cut.failed_before == {site: [] for site in cut.others}, cut.failed_before
    # the cut was felt. Which calls it caught depends on how far round 1 had gone when the port went
    # down (a busy machine may finish the round's pulls and pushes first): the other sites' calls to
    # site-c, or site-c's own (its wait at the next barrier, its heartbeats), which fail within 15 s
    # (a heartbeat interval plus its call timeout): inside the `most` seconds the cut lasts unless
    # every other site's calls to site-c failed
    own = cut.own_failures()
    print(f"failed calls to site-c: {cut.failed_during}; site-c's own: {own}")
    assert any(cut.failed_during.values()) or own, (cut.seconds, cut.failed_during, own)
    # ... and were retried until they passed: the run finished, nobody skipped, no student left untaught
    _check_own_data_run(results)
    assert results["skipped"] == [] and results["errors"] == [], (results["skipped"], results["errors"])
    assert accuracies(results) == accuracies(loopback)
    assert [p["received"] for p in results["peers"]] == [p["received"] for p in loopback["peers"]]
    taught = {(p["teacher"], p["student"]) for p in results["pairs"] if p["round"] == 1}
    assert {("site-a", "site-c"), ("site-b", "site-c"), ("site-c", "site-a"), ("site-c", "site-b")} <= taught
    a = audit_stores({s.id: tmp_path / "hosts" / s.id / "state" for s in SITES})
    assert a.problems == [] and a.acknowledged > 0 and a.lost == 0 and a.duplicates == 0, a
    assert a.unacknowledged == 0 and a.stored == a.acknowledged, a


@pytest.mark.flower
@pytest.mark.slow
@pytest.mark.deploy
def test_flower_supernodes_on_their_own_files_equal_the_grpc_run(sites, loopback, tmp_path):
    """The same sites as SuperNodes of a deployment SuperLink on loopback, each node config naming
    the peer and its own data options (id, data, label, class-map, classes, test-data); the run
    config the experiment's other options. The same results as `ckd peer`; the ServerApp never
    learns a path or a label column."""
    from tests.flower_local import flower
    from tests.own_sites import RUN
    from tests.results_compare import assert_same_results

    _, data, _ = sites
    run_config: dict = {k[2:]: (int(v) if v.isdigit() else v) for k, v in zip(RUN[::2], RUN[1::2])}
    out = tmp_path / "out"
    with flower(tmp_path, simulation=False) as fl:
        for site in SITES:
            args = site.data_args(data[site.id])
            fl.start_node(site.id, {"id": site.id, **{k[2:]: v for k, v in zip(args[::2], args[1::2])}})
        res = fl.run({**run_config, "peers": len(SITES), "out": str(out), "wait-nodes": 60.0}, timeout=420)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:] + fl.log_text()
    text = (out / "results.json").read_text()
    results = json.loads(text)
    assert str(data["site-a"].parent) not in text and "diagnosis" not in text
    # the gRPC run's config is its first peer's options (its label column and class map included)
    assert_same_results({**results, "config": None}, {**loopback, "config": None})
    _check_own_data_run(results, "flower")
