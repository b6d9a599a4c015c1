"""Flower deployment where only registered SuperNodes join: Flower's own SuperNode authentication.

On loopback with TLS, as README's recipe: the SuperLink starts with `--enable-supernode-auth`,
each SuperNode has its own EC key pair, and a SuperNode's public key is registered with
`flwr supernode register` before it starts with `--auth-supernode-private-key`. Refused, each
by a test: a SuperNode whose key was never registered (it claims a registered peer's
partition), one whose key was registered and then unregistered, one with no key at all, one
started before its key was registered (it joins when started again after), and a registered
SuperNode unregistered while it is online. None of them is ever listed online while refused
or counted by a run; each exits, saying why where Flower tells it, within a bounded wait.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time

import pytest

from peer.data.fashion import find_data_dir
from tests.flower_local import flower, supernode_key
from tests.flower_util import SMALL

pytestmark = [pytest.mark.flower, pytest.mark.slow, pytest.mark.deploy]

# two peers, a few hundred images each, one round, one epoch
TINY = {**SMALL, "peers": 2, "epochs": 1, "train-per-peer": 300, "test-limit": 500}
# a SuperNode on a busy 2-core machine takes 10 to 20 s to start and reach the SuperLink
START = 120


def _exit_code(proc: subprocess.Popen, within: float) -> int:
    try:
        return proc.wait(timeout=within)
    except subprocess.TimeoutExpired:
        pytest.fail(f"SuperNode {proc.args} still running {within} s after it started")


def _wait_online(fl, node_ids: set[int], within: float) -> list[dict]:
    """`flwr supernode list` until exactly `node_ids` are online; the last listing."""
    deadline = time.monotonic() + within
    while True:
        nodes = fl.nodes()
        if {int(n["node-id"]) for n in nodes if n["status"] == "online"} == node_ids:
            return nodes
        if time.monotonic() > deadline:
            pytest.fail(f"online SuperNodes are not {sorted(node_ids)} after {within} s: {nodes}\n{fl.log_text()}")
        time.sleep(1)


@pytest.fixture(scope="module")
def federation(tmp_path_factory, fmnist):
    """A SuperLink with TLS and SuperNode authentication; peer-0's and peer-1's keys registered,
    one more key registered and then unregistered, one never registered. peer-1's key is made
    with README's ssh-keygen command where OpenSSH is installed. Yields (flower, keys directory,
    {name: node id} of the keys ever registered)."""
    tmp = tmp_path_factory.mktemp("node-auth")
    keys = tmp / "keys"
    keys.mkdir()
    with flower(tmp, simulation=False, tls=True, node_auth=True) as fl:
        openssh = shutil.which("ssh-keygen") is not None
        ids = {
            name: fl.register(supernode_key(keys / name, ssh_keygen=openssh and name == "peer-1"))
            for name in ("peer-0", "peer-1", "revoked")
        }
        supernode_key(keys / "stranger")
        fl.unregister(ids["revoked"])
        yield fl, keys, ids


def test_only_registered_supernodes_join_and_a_run_counts_only_them(federation, tmp_path):
    fl, keys, ids = federation
    fl.start_supernode(0, 2, key=keys / "peer-0")
    fl.start_supernode(1, 2, key=keys / "peer-1", **{"data-dir": str(find_data_dir(None))})
    # each refused one claims a partition a registered peer holds: were it let in, the run
    # would see two holders of that partition and stop with an error
    refused = {
        "stranger": fl.start_supernode(0, 2, key=keys / "stranger", name="stranger"),
        "revoked": fl.start_supernode(1, 2, key=keys / "revoked", name="revoked"),
        "no-key": fl.start_supernode(1, 2, name="no-key"),
    }
    for name, proc in refused.items():
        assert _exit_code(proc, START) != 0, fl.log_text()
        log = fl.supernode_log(name).read_text()
        assert "Failed to initialize the connection to the SuperLink" in log, log
        assert "SuperNode ID:" not in log, log
    assert "[code: 2004] Failed to activate SuperNode" in fl.supernode_log("stranger").read_text()
    assert "[code: 2004] Failed to activate SuperNode" in fl.supernode_log("revoked").read_text()
    assert "must be registered via the CLI" in fl.supernode_log("no-key").read_text()

    registered = {ids["peer-0"], ids["peer-1"]}
    nodes = _wait_online(fl, registered, START)
    # the SuperLink knows the keys registered through the CLI and nothing else
    assert {int(n["node-id"]) for n in nodes} == set(ids.values()), nodes
    assert next(n for n in nodes if int(n["node-id"]) == ids["revoked"])["status"] == "unregistered"
    activated = {int(m) for m in re.findall(r"Activated node_id=(\d+)", (fl.tmp / "superlink.log").read_text())}
    assert activated == registered

    out = tmp_path / "out"
    res = fl.run({**TINY, "out": str(out), "wait-nodes": 30.0}, timeout=300)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-3000:] + fl.log_text()
    summary = json.loads((out / "results.json").read_text())
    assert summary["status"] == "ok", summary
    # the run used the two registered SuperNodes, by the ids their keys were registered under
    assert summary["flower"]["nodes"] == {"peer-0": ids["peer-0"], "peer-1": ids["peer-1"]}
    assert "nodes connected, using" not in log
    assert all(0 < p["accuracy_after"] <= 1 for p in summary["peers"])


def test_a_supernode_registered_after_it_was_refused_joins_and_is_cut_off_once_unregistered(federation):
    """A peer that starts before its key is registered is refused; started again once it is, it
    joins. Revoking it (`flwr supernode unregister` while it is online): its next request is
    refused, it stops, and it is listed as unregistered, never online again."""
    fl, keys, ids = federation
    pub = supernode_key(keys / "late")
    early = fl.start_supernode(1, 2, key=keys / "late", name="late-early")
    assert _exit_code(early, START) != 0
    assert "[code: 2004] Failed to activate SuperNode" in fl.supernode_log("late-early").read_text()
    ids["late"] = fl.register(pub)
    online = {int(n["node-id"]) for n in fl.nodes() if n["status"] == "online"}
    proc = fl.start_supernode(1, 2, key=keys / "late", name="late")
    _wait_online(fl, online | {ids["late"]}, START)
    fl.unregister(ids["late"])
    _exit_code(proc, 60)
    nodes = _wait_online(fl, online, 30)
    assert next(n for n in nodes if int(n["node-id"]) == ids["late"])["status"] == "unregistered"
    after = (fl.tmp / "superlink.log").read_text().split("ControlServicer.UnregisterNode")[-1]
    assert re.search(r'"POST /v1/fleet/\S+ HTTP/1.1" 401', after), after
