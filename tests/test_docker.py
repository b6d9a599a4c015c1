"""The Docker deployment: the container healthcheck against real gRPC servers, the compose files'
wiring, and (marked `docker`, root only) docker-compose.yml brought up for real by
docker/compose-test.sh, the results checked."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from peer.grpc.service import serve
from peer.grpc.tls import Security, make_certs
from peer.grpc.wire import Limits
from server import health

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "docker" / "compose-test.sh"
PEERS = [f"peer-{k}" for k in range(10)]


def _compose(*names: str) -> dict:
    return yaml.safe_load((ROOT / Path(*names)).read_text())


# -- the healthcheck (python -m server.health), against a real server ------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    make_certs(d, ["coordinator", "peer-3"])
    return d


@pytest.mark.grpc
def test_health_defaults_come_from_the_checked_process_environment():
    assert health.default_address({"CKD_LISTEN": "0.0.0.0:50103"}) == "127.0.0.1:50103"
    assert health.default_address({"CKD_LISTEN": "127.0.0.1:50051"}) == "127.0.0.1:50051"
    assert health.default_name({"CKD_ID": "peer-7", "CKD_PART": "3"}) == "peer-7"
    assert health.default_name({"CKD_PART": "3"}) == "peer-3"
    assert health.default_name({}) == "coordinator"


@pytest.mark.grpc
def test_health_serving_over_mtls_and_clear_failures(certs, capsys):
    server, port, _ = serve([], Security.from_dir("peer-3", certs, False), "127.0.0.1:0", Limits(), workers=2)
    try:
        env = {"CKD_LISTEN": f"0.0.0.0:{port}", "CKD_PART": "3", "CKD_CERTS": str(certs)}
        assert health.main([], env) == 0
        assert "SERVING" in capsys.readouterr().out
        # the server holds peer-3's certificate, not the coordinator's: refused
        assert health.main(["--name", "coordinator", "--timeout", "2"], env) == 1
        assert capsys.readouterr().err.startswith("unhealthy:")
        # plaintext against an mTLS server gets nothing
        assert health.main(["--timeout", "2"], {**env, "CKD_CERTS": ""}) == 1
        assert health.main(["--name", "peer-9"], env) == 1
        assert "missing certificate file" in capsys.readouterr().err
    finally:
        server.stop(grace=0).wait()
    assert health.main(["--timeout", "2"], env) == 1  # nothing listening
    assert "UNAVAILABLE" in capsys.readouterr().err


# -- the compose files' wiring ----------------------------------------------------------------------------


def test_compose_has_certs_coordinator_and_ten_peers_each_on_its_own_part_and_volume():
    base = _compose("docker-compose.yml")
    services = base["services"]
    assert set(services) == {"certs", "coordinator", *PEERS}
    assert services["certs"]["command"][0].count("ckd certs --out /certs --peers 10") == 1
    assert services["coordinator"]["command"] == ["server"]
    assert services["coordinator"]["depends_on"]["certs"]["condition"] == "service_completed_successfully"
    for k, pid in enumerate(PEERS):
        s = services[pid]
        assert s["command"] == ["peer", "--part", str(k)]
        assert s["environment"]["CKD_ID"] == pid
        assert s["environment"]["CKD_COORDINATOR"] == "coordinator:50051"
        assert s["depends_on"]["coordinator"]["condition"] == "service_healthy"
        assert f"{pid}:/state" in s["volumes"] and "certs:/certs:ro" in s["volumes"]
    assert all(s.get("init") is True for s in services.values())
    assert set(base["volumes"]) == {"certs", *PEERS}


def test_compose_peers_default_to_the_release_ckd_defaults_to():
    """`docker compose up` with no settings sends what `ckd peer` would: the default privacy preset."""
    from peer.config import DEFAULT_PRIVACY

    for pid in PEERS:
        value = _compose("docker-compose.yml")["services"][pid]["environment"]["CKD_PRIVACY"]
        assert value == f"${{CKD_PRIVACY:-{DEFAULT_PRIVACY}}}"


def test_hostnet_override_keeps_every_service_on_loopback_with_distinct_ports():
    base, over = _compose("docker-compose.yml")["services"], _compose("docker", "compose.hostnet.yml")["services"]
    assert set(over) == set(base)
    ports = []
    for name, s in over.items():
        assert s["network_mode"] == "host"
        assert sorted(s["extra_hosts"]) == sorted(f"{n}:127.0.0.1" for n in base if n != "certs")
        assert "ports" not in s and "ports" not in base[name]
        listen = s.get("environment", {}).get("CKD_LISTEN")
        if name != "certs":
            host, port = listen.rsplit(":", 1)
            assert host == "127.0.0.1"
            ports.append(port)
            advertised = base[name]["environment"].get("CKD_ADVERTISE")
            assert advertised in (None, f"{name}:{port}")
    assert len(set(ports)) == len(ports) == 11


def test_mixed_override_sets_each_peers_learner():
    over = _compose("docker", "compose.mixed.yml")["services"]
    kinds = [over[pid]["environment"]["CKD_LEARNER"] for pid in PEERS]
    assert kinds == ["cnn"] * 4 + ["mlp"] * 3 + ["forest"] * 3


def test_owndata_override_gives_each_peer_its_own_directory_and_no_part():
    over = _compose("docker", "compose.owndata.yml")["services"]
    mounts = set()
    for pid in PEERS:
        s = over[pid]
        assert s["command"] == ["peer"]  # no --part: the whole file is the peer's
        assert s["environment"]["CKD_DATA"].startswith("/data/own/")
        # a test file of its own when CKD_OWN_TEST_DATA names one; empty (unset for ckd) otherwise
        assert s["environment"]["CKD_TEST_DATA"] == "${CKD_OWN_TEST_DATA:-}"
        mounts.add(next(v for v in s["volumes"] if v.endswith(":/data/own:ro")))
    assert len(mounts) == 10


# -- the real thing ---------------------------------------------------------------------------------------


def _docker_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root: docker/compose-test.sh may start dockerd and debootstrap a base image"
    if not shutil.which("dockerd") and subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        return (
            "no Docker engine and no dockerd; `make compose-test` installs docker.io, docker-compose "
            "and debootstrap with apt"
        )
    if not shutil.which("docker"):
        return "no docker client"
    if (
        not shutil.which("docker-compose")
        and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0
    ):
        return "neither docker-compose nor `docker compose` is installed"
    if not os.environ.get("CKD_BASE_IMAGE") and not shutil.which("debootstrap"):
        return "no debootstrap for the base image (or give CKD_BASE_IMAGE)"
    if not Path(os.environ.get("CKD_FMNIST_DIR", "/usr/share/datasets/fashion-mnist")).is_dir():
        return "no Fashion-MNIST (apt-get install dataset-fashion-mnist, or set CKD_FMNIST_DIR)"
    return None


@pytest.mark.docker
def test_compose_up_runs_fmnist10_small_to_the_end(tmp_path):
    reason = _docker_unavailable()
    if reason:
        pytest.skip(reason)
    out = tmp_path / "results"
    # the script's small configuration, whatever CKD_* the caller has set
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CKD_")
        or k in ("CKD_BASE_IMAGE", "CKD_FMNIST_DIR", "CKD_DOCKER_WORK", "CKD_DOCKER_CACHE", "CKD_TORCH_INDEX_URL")
    }
    env |= {"CKD_RESULTS": str(out), "CKD_IMAGE": "ckd:test", "COMPOSE_PROJECT_NAME": "ckdpytest"}
    proc = subprocess.run([str(SCRIPT), "all"], env=env, capture_output=True, text=True, timeout=3600)
    print(proc.stderr, proc.stdout)  # build and run times (pytest -s shows them)
    if proc.returncode != 0 and ("dockerd exited" in proc.stderr or "dockerd did not answer" in proc.stderr):
        pytest.skip(f"this machine cannot run a Docker engine: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "compose-test: ok: 10 peers" in proc.stdout
    run = out / "fmnist-10"  # the coordinator's --out inside the mounted directory
    r = json.loads((run / "results.json").read_text())
    assert r["status"] == "ok" and not r["errors"] and not r["skipped"]
    assert sorted(p["id"] for p in r["peers"]) == PEERS
    for p in r["peers"]:
        assert p["learner"] == "cnn"
        assert len(p["accuracy_by_round"]) == 2  # before, and after the one round
        assert 0.3 <= p["accuracy_before"] <= 1.0 and 0.3 <= p["accuracy_after"] <= 1.0
        assert p["missing_class_accuracy_before"] == 0.0  # peer k never saw class k
    assert r["median_accuracy_after"] >= 0.5
    assert r["counterfactuals"]["made"] > 0
    assert sum(r["wire"]["bytes_sent"]) > 0
    assert (run / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
