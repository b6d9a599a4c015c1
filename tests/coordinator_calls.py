"""Calls of several peers to a real coordinator at once, for the coordinator's tests."""

from __future__ import annotations

import threading

from protos.ckd.v1 import coordinator_pb2 as pb


def wait_all(stubs: dict, round: int, stage: int, timeout: float = 20) -> dict:
    """Every peer of `stubs` (peer id -> CoordinatorServiceStub) waits at one barrier, each in a
    thread of its own (a barrier releases only once they are all there); peer id -> its reply."""
    replies: dict = {}

    def wait(peer: str, stub) -> None:
        replies[peer] = stub.WaitRound(pb.WaitRoundRequest(peer=peer, round=round, stage=stage), timeout=timeout)

    threads = [threading.Thread(target=wait, args=item) for item in stubs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return replies
