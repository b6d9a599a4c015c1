"""ckd as a Flower app: the same peers and the same results as the in-process engine.

Real Flower: `flwr run .` on a simulation SuperLink (Ray), and a deployment SuperLink with one
`flower-supernode` process per peer, all on loopback ports in the test's tmp dir.
"""

from __future__ import annotations

import json
import queue
import threading
import time

import httpx
import pytest

from peer.data.fashion import find_data_dir
from peer.flower.client_app import experiment_config
from peer.inprocess import run_experiment
from server.results import summarise
from tests.flower_local import flower
from tests.flower_util import AUTO, SMALL, ClientAppFreezer
from tests.results_compare import assert_same_results

pytestmark = [pytest.mark.flower, pytest.mark.slow]

# Deployment starts a fresh ClientApp process per message; two peers keep those tests short.
TWO = {**SMALL, "peers": 2}


@pytest.fixture(scope="module")
def in_process(fmnist):
    """The same small experiment in one process, with the same seeds: run_config -> summary."""
    cache = {}

    def run(run_config: dict) -> dict:
        key = tuple(sorted(run_config.items()))
        if key not in cache:
            cfg = experiment_config(run_config, run_config["peers"])
            cache[key] = summarise(run_experiment(cfg, quiet=True, data=fmnist))
        return cache[key]

    return run


def _assert_same_results(flower_summary: dict, expected: dict) -> None:
    assert flower_summary["transport"] == "flower"
    assert_same_results(flower_summary, expected)


def test_simulation_with_flwr_run_matches_the_in_process_engine(tmp_path, in_process):
    """With rounds = "auto" and a fan-out of 1 (the deployment runs below take a number of rounds and
    all pairs): the ServerApp stops at the same round as the in-process engine, from what the
    peers' records say, and sends each teacher only its planned student's model."""
    out = tmp_path / "out"
    # labels alone: with the teachers' probabilities as targets this fan-out's peers improve up to the
    # cap, and the run would not show a stop on the peers' flags
    config = {**AUTO, "fanout": 1, "soft-labels": "off"}
    with flower(tmp_path, simulation=True) as fl:
        res = fl.run({**config, "out": str(out)}, "num-supernodes=3 client-resources-num-cpus=1 init-args-num-cpus=2")
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:] + fl.log_text()
    summary = json.loads((out / "results.json").read_text())
    assert summary["status"] == "ok", summary.get("error")
    expected = in_process(config)
    assert summary["rounds"] == expected["rounds"] and summary["rounds"]["asked"] == "auto"
    assert summary["rounds"]["stopped"] == f"no peer improved in round {summary['rounds']['run']}"
    _assert_same_results(summary, expected)
    assert len(summary["pairs"]) == 3 * summary["rounds"]["run"]
    assert (out / "accuracy.png").stat().st_size > 0 and (out / "counterfactuals.png").stat().st_size > 0
    assert "ckd: results:" in res.stdout


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, fmnist):
    """A deployment SuperLink over TLS with one flower-supernode per peer, shared by the runs below.

    As README's recipe for separate machines: the SuperLink's certificate comes from `ckd certs`
    (naming 127.0.0.1), the SuperNodes and `flwr run` verify it against the CA.
    peer-1's node config names the data directory itself, which wins over the run config's.
    """
    tmp = tmp_path_factory.mktemp("deployment")
    with flower(tmp, simulation=False, tls=True) as fl:
        fl.start_supernode(0, TWO["peers"])
        fl.start_supernode(1, TWO["peers"], **{"data-dir": str(find_data_dir(None))})
        yield fl


def test_deployment_superlink_and_supernodes_match_the_in_process_engine(deployment, tmp_path, in_process):
    out = tmp_path / "out"
    res = deployment.run({**TWO, "out": str(out), "wait-nodes": 60.0})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:] + deployment.log_text()
    summary = json.loads((out / "results.json").read_text())
    _assert_same_results(summary, in_process(TWO))
    assert sorted(summary["flower"]["nodes"]) == ["peer-0", "peer-1"]
    # the SuperLink the SuperNodes used speaks TLS only: plaintext HTTP is refused
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{deployment.port}/health", timeout=5)


def test_a_failing_client_app_is_a_clear_error_in_the_log_and_results(deployment, tmp_path):
    """The run's data directory is broken; only peer-0 uses it (peer-1 has its own): peer-0's
    ClientApp raises, and the run stops at once with an error naming that peer and phase."""
    broken = tmp_path / "broken-data"
    broken.mkdir()
    for name in (
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ):
        (broken / name).write_bytes(b"\x00\x00\x08\x03truncated")
    out = tmp_path / "out"
    # the run ends well before its phase timeout (an hour by default; run raises TimeoutExpired after 180 s)
    res = deployment.run({**TWO, "out": str(out), "wait-nodes": 60.0, "data-dir": str(broken)}, timeout=180)
    log = res.stdout + res.stderr
    assert "ckd: error: peer-0" in log and "failed in train.local" in log and "truncated" in log, log[-3000:]
    assert "peer-1" not in log.split("ckd: error:")[1].splitlines()[0]  # the other peer did not fail
    assert "ckd: round 0 trained" not in log  # it stopped in the phase that failed
    result = json.loads((out / "results.json").read_text())
    assert result["status"] == "failed"
    assert result["error"].startswith("peer-0 (node ") and "UsageError: " in result["error"]
    assert "truncated" in result["error"]
    assert result["config"]["peers"] == 2 and result["config"]["data_dir"] == str(broken)


def _lines(proc) -> queue.Queue:
    """The lines a process prints, read on a thread so the test can wait with a deadline."""
    lines: queue.Queue = queue.Queue()

    def read():
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    return lines


def _wait_for(lines: queue.Queue, text: str, seen: list[str], within: float) -> None:
    deadline = time.monotonic() + within
    while not any(text in line for line in seen):
        line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        assert line is not None, f"the run ended before {text!r}:\n" + "".join(seen)[-3000:]
        seen.append(line)


@pytest.mark.faults  # a frozen ClientApp and a 60 s phase timeout: two minutes, in `make test-faults`
def test_a_peer_whose_client_app_never_answers_stops_the_run_after_the_phase_timeout(tmp_path):
    """After round 0, peer-1's SuperNode stays connected but every ClientApp it starts is stopped:
    the ServerApp waits `timeout` seconds for its train.distill reply, then stops the run with
    an error naming that peer and the phase. (A SuperNode that stops altogether is reported by
    the SuperLink as unavailable; tests/test_flower_records.py covers naming the peer then.)"""
    out = tmp_path / "out"
    timeout = 60  # every phase must fit: a deployment ClientApp starts a process and loads the data
    with flower(tmp_path, simulation=False) as fl:
        fl.start_supernode(0, TWO["peers"])
        fl.start_supernode(1, TWO["peers"])
        proc = fl.start_run({**TWO, "out": str(out), "wait-nodes": 60.0, "timeout": float(timeout)})
        lines, seen = _lines(proc), []
        try:
            _wait_for(lines, "ckd: round 0 trained", seen, within=timeout + 90)
        except queue.Empty:
            pytest.fail(f"round 0 did not finish within {timeout + 90} s:\n" + "".join(seen)[-3000:] + fl.log_text())
        freezer = ClientAppFreezer(fl.supernodes[1].pid)
        try:
            _wait_for(lines, "ckd: error:", seen, within=timeout + 60)
        except queue.Empty:
            pytest.fail("no error 60 s after the phase timeout:\n" + "".join(seen)[-3000:])
        finally:
            freezer.stop()
        proc.wait(timeout=30)  # the run ends (`flwr run --stream` exits 0 whatever the ServerApp did)
    assert freezer.frozen, "peer-1's SuperNode started no ClientApp after round 0"
    error = next(line for line in seen if "ckd: error:" in line)
    assert f"ckd: error: no reply to train.distill (round 1) within {timeout} s from peer-1 (node " in error, error
    assert "peer-0" not in error
    result = json.loads((out / "results.json").read_text())
    assert result["status"] == "failed" and result["error"].startswith("no reply to train.distill")
