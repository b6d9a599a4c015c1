"""Ask a peer's or the coordinator's standard grpc.health.v1 service whether it is serving.

`python -m server.health` is the container healthcheck of docker/Dockerfile: it imports grpc and
nothing of torch, so it costs a fraction of a second. Its defaults come from the same CKD_*
variables the process it checks was started with (CKD_LISTEN or CKD_ADVERTISE, CKD_CERTS, CKD_ID
or CKD_PART), so inside a container a bare `python -m server.health` asks the process next to it.
Exit code 0: SERVING; 1: anything else (not serving, unreachable, bad certificate), with one line
saying which.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

WILDCARD_HOSTS = ("0.0.0.0", "[::]", "")


def default_address(env: dict[str, str]) -> str:
    """Where this container's ckd process listens: CKD_LISTEN, a wildcard host asked on loopback."""
    listen = env.get("CKD_LISTEN", "127.0.0.1:50051")
    host, _, port = listen.rpartition(":")
    return f"127.0.0.1:{port}" if host in WILDCARD_HOSTS else listen


def default_name(env: dict[str, str]) -> str:
    """The certificate name the server holds: CKD_ID, else peer-CKD_PART, else coordinator."""
    if env.get("CKD_ID"):
        return env["CKD_ID"]
    if env.get("CKD_PART"):
        return f"peer-{env['CKD_PART']}"
    return "coordinator"


def check(address: str, name: str, certs: Path | None, service: str = "", timeout: float = 5.0) -> str | None:
    """None when `address` answers SERVING for `service`, else why not (one line).

    With `certs`, the check speaks mutual TLS as `name` (its own key and certificate, like the
    process it checks) and accepts only a server that holds `name`'s certificate."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if certs is None:
        channel = grpc.insecure_channel(address)
    else:
        paths = [certs / "ca.pem", certs / f"{name}.key", certs / f"{name}.pem"]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            return f"missing certificate file(s) {', '.join(missing)}"
        ca, key, cert = (p.read_bytes() for p in paths)
        creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
        channel = grpc.secure_channel(address, creds, options=[("grpc.ssl_target_name_override", name)])
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout
        )
    except grpc.RpcError as exc:
        return f"{address} ({name}): {exc.code().name}: {exc.details()}"
    finally:
        channel.close()
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        return f"{address} ({name}): {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"
    return None


def main(argv: list[str] | None = None, env: dict[str, str] | None = None) -> int:
    env = dict(os.environ) if env is None else env
    parser = argparse.ArgumentParser(
        prog="python -m server.health", description="Ask a ckd peer or coordinator's grpc.health.v1 service."
    )
    parser.add_argument(
        "--address",
        default=default_address(env),
        help="host:port to ask (default: CKD_LISTEN, a wildcard host asked on 127.0.0.1)",
    )
    parser.add_argument(
        "--name",
        default=default_name(env),
        help="certificate name of the server (default: CKD_ID, else peer-CKD_PART, else coordinator)",
    )
    parser.add_argument(
        "--certs",
        default=env.get("CKD_CERTS") or None,
        help="directory with ca.pem, NAME.pem and NAME.key (default: CKD_CERTS; none: plaintext)",
    )
    parser.add_argument("--service", default="", help="service name to ask about ('' is the whole server)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer")
    args = parser.parse_args(argv)
    problem = check(args.address, args.name, Path(args.certs) if args.certs else None, args.service, args.timeout)
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    print(f"{args.address} ({args.name}): SERVING")
    return 0


if __name__ == "__main__":
    sys.exit(main())
