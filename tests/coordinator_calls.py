"""Calls of several peers to a real coordinator at once, for the coordinator's tests."""

from __future__ import annotations

import threading

from protos.ckd.v1 import coordinator_pb2 as pb


def wait_all(stubs: dict, round: int, stage: int, timeout: float = 20, extra: dict | None = None) -> dict:
    """Every peer of `stubs` (peer id -> CoordinatorServiceStub) waits at one barrier, each in a
    thread of its own (a barrier releases only once they are all there); peer id -> its reply.
    `extra`: peer id -> more fields of its WaitRoundRequest."""
    replies: dict = {}

    def wait(peer: str, stub) -> None:
        request = pb.WaitRoundRequest(peer=peer, round=round, stage=stage, **(extra or {}).get(peer, {}))
        replies[peer] = stub.WaitRound(request, timeout=timeout)

    threads = [threading.Thread(target=wait, args=item) for item in stubs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return replies
