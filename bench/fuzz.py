"""Hostile input at scale: >= 10,000 fuzz cases against a real peer and coordinator process.

    python bench/fuzz.py                  # -> bench/results/fuzz.json
    python bench/fuzz.py --scale 0.1      # a tenth of the cases, for a quick look

A peer (peer-0) and a coordinator run in a process of their own (tests/hostile_server.py) with
mutual TLS on loopback; this process attacks them with the hypothesis strategies of
tests/fuzz_cases.py (derandomized: the same cases every run), every case invalid by construction:
PushExamples streams, GetModel and Status requests, every coordinator RPC. Forged model blobs are
served by a hostile peer in this process and pulled by a real GrpcTransport; Flower records are
parsed as the ClientApp and ServerApp parse them. Counted per target:

- refused: a refusal status (gRPC) or InvalidPayload (blobs, Flower records), with a reason;
- crashes: anything else (an INTERNAL or UNKNOWN status, another exception, a dead process, a
  failed health check);
- accepted: a hostile case taken as valid.

`stored` is what the service process holds at the end that no valid call put there (batches,
coordinator registrations, metrics, barriers) plus Flower batches accepted; `peak_rss_mb` is that
process's peak resident memory (getrusage), beside its figure before the attack.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

import grpc  # noqa: E402
import numpy as np  # noqa: E402
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict  # noqa: E402
from fmnist10 import machine as cpu_machine  # noqa: E402  (bench/ is this script's folder on sys.path)
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from peer.core.blob import InvalidPayload  # noqa: E402
from peer.flower import records as rec  # noqa: E402
from peer.grpc.service import grpc_options  # noqa: E402
from peer.grpc.tls import Security, make_certs  # noqa: E402
from peer.grpc.transport import GrpcTransport, PeerUnreachable  # noqa: E402
from peer.learners import learner_from_blob  # noqa: E402
from protos.ckd.v1 import coordinator_pb2 as cpb  # noqa: E402
from protos.ckd.v1 import coordinator_pb2_grpc  # noqa: E402
from tests import fuzz_cases as fc  # noqa: E402
from tests import hostile_server  # noqa: E402
from tests.fuzz_cases import CLASSES, LIMITS, RECEIVER, REFUSALS, SENDER, SHAPE  # noqa: E402

# cases per target at --scale 1 (14,000 in all)
PLAN = {
    "PushExamples": 4000,
    "GetModel": 1500,
    "Status": 500,
    "coordinator": 2500,
    "forged blob over gRPC": 1500,
    "hostile model stream": 500,
    "Flower model record": 1000,
    "Flower batch record": 1000,
    "Flower round record": 500,
    "ServerApp relay": 500,
    "ServerApp model reply": 500,
}


class Tally:
    def __init__(self) -> None:
        self.targets: dict[str, Counter] = {}
        self.seconds: dict[str, float] = {}
        self.examples: list[str] = []  # the first few crashes or acceptances, for a human to read

    def count(self, target: str, outcome: str, detail: str = "") -> None:
        self.targets.setdefault(target, Counter())[outcome] += 1
        if outcome in ("crash", "accepted") and len(self.examples) < 20:
            self.examples.append(f"{target}: {outcome}: {detail[:300]}")


def run_target(name: str, n: int, strategy, case_fn, tally: Tally) -> None:
    """Run `case_fn` on `n` derandomized examples of `strategy`; it never raises, it counts."""
    t0 = time.time()

    @settings(max_examples=n, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(strategy)
    def run(case):
        case_fn(case, tally)

    run()
    tally.seconds[name] = round(time.time() - t0, 1)


def grpc_outcome(call) -> tuple[str, str]:
    try:
        call()
    except grpc.RpcError as exc:
        if exc.code() in REFUSALS and exc.details():
            return f"refused {exc.code().name}", exc.details()
        return "crash", f"{exc.code().name}: {exc.details()}"
    except Exception as exc:  # noqa: BLE001
        return "crash", f"{type(exc).__name__}: {exc}"
    return "accepted", ""


def payload_outcome(call) -> tuple[str, str]:
    try:
        call()
    except (InvalidPayload, PeerUnreachable) as exc:
        return ("refused", str(exc)) if str(exc) else ("crash", "a refusal without a reason")
    except Exception as exc:  # noqa: BLE001
        return "crash", f"{type(exc).__name__}: {exc}"
    return "accepted", ""


def raw(channel, kind: str, path: str):
    return getattr(channel, kind)(path, request_serializer=lambda b: b, response_deserializer=lambda b: b)


def healthy(channel, service: str = "") -> bool:
    try:
        return (
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
            == health_pb2.HealthCheckResponse.SERVING
        )
    except grpc.RpcError:
        return False


def machine() -> dict:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        **cpu_machine(),
        "grpc": grpc.__version__,
        "load_average_at_start": [round(v, 1) for v in load] if load else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every target's case count")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "fuzz.json"))
    args = parser.parse_args(argv)
    logging.getLogger("flwr").setLevel(logging.ERROR)  # Flower warns of every record it overwrites
    plan = {k: max(1, round(v * args.scale)) for k, v in PLAN.items()}
    command = "python bench/fuzz.py" + "".join(f" {a}" for a in map(shlex.quote, sys.argv[1:]))
    tally = Tally()
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="ckd-fuzz-") as tmp:
        certs = Path(tmp) / "certs"
        make_certs(certs, ["coordinator", RECEIVER, SENDER, fc.OTHER])
        log = open(Path(tmp) / "server.log", "w")  # noqa: SIM115
        proc = hostile_server.start(certs, Path(tmp) / "state", log, {**os.environ, "OMP_NUM_THREADS": "1"})

        def stats() -> dict:
            proc.stdin.write("stats\n")
            proc.stdin.flush()
            return json.loads(proc.stdout.readline())

        ports = json.loads(proc.stdout.readline())
        me = Security.from_dir(SENDER, certs, False)
        peer = me.channel(f"127.0.0.1:{ports['peer']}", RECEIVER, grpc_options(LIMITS))
        coord = me.channel(f"127.0.0.1:{ports['coordinator']}", "coordinator", grpc_options(LIMITS))
        coordinator_pb2_grpc.CoordinatorServiceStub(coord).Register(
            cpb.RegisterRequest(peer=SENDER, address="127.0.0.1:1"), timeout=10
        )  # the one valid call
        baseline = stats()
        health_failures = 0

        def checked(target: str, outcome: tuple[str, str], tally: Tally) -> None:
            nonlocal health_failures
            tally.count(target, *outcome)
            if sum(tally.targets[target].values()) % 50 == 0:
                if not (healthy(peer, "ckd.v1.PeerService") and healthy(coord)):
                    health_failures += 1
                    tally.count(target, "crash", "health check failed")

        push = raw(peer, "stream_unary", "/ckd.v1.PeerService/PushExamples")
        get = raw(peer, "unary_stream", "/ckd.v1.PeerService/GetModel")
        status = raw(peer, "unary_unary", "/ckd.v1.PeerService/Status")
        run_target(
            "PushExamples",
            plan["PushExamples"],
            fc.hostile_push(),
            lambda c, t: checked("PushExamples", grpc_outcome(lambda: push(iter(c[0]), timeout=30)), t),
            tally,
        )
        run_target(
            "GetModel",
            plan["GetModel"],
            fc.hostile_get_model(),
            lambda c, t: checked("GetModel", grpc_outcome(lambda: list(get(c[0], timeout=30))), t),
            tally,
        )

        # StatusRequest has no fields: only bytes that do not parse are hostile (a length past the
        # end, a wire type that does not exist)
        unparsable = st.one_of(
            st.builds(lambda b: b"\x0a\x09" + b, st.binary(max_size=6)),
            st.builds(lambda b: b"\xff\xff\xff\x01" + b, st.binary(max_size=32)),
        )
        run_target(
            "Status",
            plan["Status"],
            unparsable,
            lambda c, t: checked("Status", grpc_outcome(lambda: status(c, timeout=30)), t),
            tally,
        )

        def coordinator_case(case, t: Tally) -> None:
            method, data, _ = case
            call = raw(coord, "unary_unary", f"/ckd.v1.CoordinatorService/{method}")
            checked("coordinator", grpc_outcome(lambda: call(data, timeout=30)), t)

        run_target("coordinator", plan["coordinator"], fc.hostile_coordinator(), coordinator_case, tally)

        # forged blobs: a hostile peer in this process, pulled by a real transport
        from tests.test_fuzz import HostilePeer, hostile_batch_record

        blobs = fc.real_blobs()
        hostile = HostilePeer(certs)
        transport = GrpcTransport(SENDER, {fc.OTHER: f"127.0.0.1:{hostile.port}"}, me, LIMITS, retries=0, timeout=30)

        def pulled(case, t: Tally) -> None:
            hostile.stream = fc.blob_stream(case[0], fc.OTHER, 1)
            t.count(
                "forged blob over gRPC", *payload_outcome(lambda: learner_from_blob(transport.get_model(fc.OTHER, 1)))
            )

        run_target("forged blob over gRPC", plan["forged blob over gRPC"], fc.forged_blob(blobs), pulled, tally)

        good = fc.blob_stream(blobs["mlp"], fc.OTHER, 1)

        def stream_case(case, t: Tally) -> None:
            kind, at, junk = case
            stream = list(good)
            if kind == "truncated":
                stream = stream[: at % len(stream)]
            elif kind == "no header":
                stream = stream[1:]
            elif kind == "two headers":
                stream.insert(1 + at % len(stream), stream[0])
            else:
                stream.insert(at % (len(stream) + 1), b"\xff\xff\xff\x01" + junk)
            hostile.stream = stream
            t.count(
                "hostile model stream", *payload_outcome(lambda: learner_from_blob(transport.get_model(fc.OTHER, 1)))
            )

        run_target(
            "hostile model stream",
            plan["hostile model stream"],
            st.tuples(
                st.sampled_from(["truncated", "no header", "two headers", "garbage"]),
                st.integers(0, 10**6),
                st.binary(max_size=16),
            ),
            stream_case,
            tally,
        )
        transport.close()
        hostile.server.stop(grace=0).wait()

        flower_stored = 0

        def flower_blob(case, t: Tally) -> None:
            blob = case[0]
            content = RecordDict()
            content["model.peer-2"] = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in blob.arrays.items()})
            content["model.peer-2.spec"] = ConfigRecord({"spec": json.dumps(blob.spec)})
            t.count(
                "Flower model record",
                *payload_outcome(lambda: learner_from_blob(rec.get_blob(content, fc.OTHER, LIMITS))),
            )

        run_target("Flower model record", plan["Flower model record"], fc.forged_blob(blobs), flower_blob, tally)

        def flower_batch(case, t: Tally) -> None:
            nonlocal flower_stored
            content, key, _ = case
            outcome = payload_outcome(lambda: rec.get_batch(content, key, LIMITS).validate(SHAPE, CLASSES))
            flower_stored += outcome[0] == "accepted"
            t.count("Flower batch record", *outcome)

        run_target("Flower batch record", plan["Flower batch record"], hostile_batch_record(), flower_batch, tally)

        def flower_record(case, t: Tally) -> None:
            text, wrong = case
            content = RecordDict()
            content[rec.RECORD] = ArrayRecord() if wrong else ConfigRecord({"json": text})
            t.count("Flower round record", *payload_outcome(lambda: rec.get_record(content, "peer-1 train.local")))

        run_target(
            "Flower round record",
            plan["Flower round record"],
            st.tuples(
                st.one_of(
                    st.text(max_size=40),
                    st.just("[" * 5000 + "]" * 5000),
                    st.builds(json.dumps, st.dictionaries(st.text(max_size=6), fc.WEIRD, max_size=4)),
                ),
                st.booleans(),
            ),
            flower_record,
            tally,
        )

        from peer.round import PeerRound
        from server.flower_app import Collector, RunFailed, relay
        from tests.test_fuzz import _federation

        def server_relay(case, t: Tally) -> None:
            nonlocal flower_stored
            content, _, _ = case
            rec.put_record(content, PeerRound(SENDER, 1))
            try:
                inbox = relay({11: content}, _federation(), 1, Collector([RECEIVER, SENDER, fc.OTHER]))
            except RunFailed as exc:
                t.count("ServerApp relay", "refused", str(exc))
                return
            except Exception as exc:  # noqa: BLE001
                t.count("ServerApp relay", "crash", f"{type(exc).__name__}: {exc}")
                return
            # relayed: the receiving ClientApp must refuse it (it does not fit the receiver)
            outcomes = [
                payload_outcome(lambda b=box, k=k: rec.get_batch(b, k, LIMITS).validate(SHAPE, CLASSES))
                for box in inbox.values()
                for k in rec.batch_keys(box)
            ]
            worst = next((o for o in outcomes if o[0] != "refused"), ("refused by the receiver", ""))
            flower_stored += worst[0] == "accepted"
            t.count("ServerApp relay", *worst)

        run_target("ServerApp relay", plan["ServerApp relay"], hostile_batch_record(), server_relay, tally)

        def server_model(case, t: Tally) -> None:
            blob = case[0]
            content = RecordDict()
            content[f"model.{SENDER}"] = ArrayRecord(
                {k: Array(np.ascontiguousarray(v)) for k, v in blob.arrays.items()}
            )
            content[f"model.{SENDER}.spec"] = ConfigRecord({"spec": json.dumps(blob.spec)})
            content["about"] = ConfigRecord({"learner": "mlp", "missing": [], "classes": list(CLASSES)})
            rec.put_record(content, PeerRound(SENDER, 0))
            try:
                Collector([RECEIVER, SENDER, fc.OTHER]).trained({11: content}, _federation(), "train.local")
            except RunFailed as exc:
                t.count("ServerApp model reply", "refused", str(exc))
                return
            except Exception as exc:  # noqa: BLE001
                t.count("ServerApp model reply", "crash", f"{type(exc).__name__}: {exc}")
                return
            t.count(
                "ServerApp model reply", *payload_outcome(lambda: learner_from_blob(rec.get_blob(content, SENDER)))
            )  # passed on: every peer rebuilding it must refuse it

        run_target("ServerApp model reply", plan["ServerApp model reply"], fc.forged_blob(blobs), server_model, tally)

        alive = proc.poll() is None and healthy(peer, "ckd.v1.PeerService") and healthy(coord)
        end = stats() if alive else {}
        peer.close()
        coord.close()
        proc.stdin.close()
        proc.wait(timeout=60)
        log.close()
        refusals_logged = sum("refused a call" in line for line in (Path(tmp) / "server.log").read_text().splitlines())

    stored_service = (
        (
            end.get("batches_stored", -1)
            - baseline["batches_stored"]
            + len(set(end.get("coordinator_peers", [])) - set(baseline["coordinator_peers"]))
            + end.get("coordinator_metrics", 0)
            - baseline["coordinator_metrics"]
            + end.get("barriers", 0)
            - baseline["barriers"]
        )
        if end
        else None
    )
    targets = {
        name: {
            "cases": sum(c.values()),
            "refused": sum(v for k, v in c.items() if k.startswith("refused")),
            "crashes": c.get("crash", 0),
            "accepted": c.get("accepted", 0),
            "outcomes": dict(sorted(c.items())),
            "seconds": tally.seconds.get(name),
        }
        for name, c in tally.targets.items()
    }
    result = {
        "fuzz_cases": sum(t["cases"] for t in targets.values()),
        "crashes": sum(t["crashes"] for t in targets.values()) + (0 if alive else 1),
        "accepted": sum(t["accepted"] for t in targets.values()),
        "stored": None if stored_service is None else stored_service + flower_stored,
        "peak_rss_mb": end.get("peak_rss_mb"),
        "rss_mb_before_attack": baseline["peak_rss_mb"],
        "service_alive_after": alive,
        "health_check_failures": health_failures,
        "refusals_logged_by_service": refusals_logged,
        "limits": {k: getattr(LIMITS, k) for k in LIMITS.__dataclass_fields__},
        "targets": targets,
        "examples": tally.examples,
        "wall_seconds": round(time.time() - started, 1),
        "command": command,
        "machine": machine(),
        "notes": "service = peer-0 and the coordinator in one process (tests/hostile_server.py), mutual TLS on "
        "loopback; peak_rss_mb is its ru_maxrss after every case; forged blobs and Flower records are "
        "parsed in the attacking process, as a peer pulling a model or a Flower app would.",
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps(
            {
                k: result[k]
                for k in (
                    "fuzz_cases",
                    "crashes",
                    "accepted",
                    "stored",
                    "peak_rss_mb",
                    "rss_mb_before_attack",
                    "wall_seconds",
                )
            }
        )
    )
    return 0 if result["crashes"] == 0 and result["stored"] == 0 and result["accepted"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
