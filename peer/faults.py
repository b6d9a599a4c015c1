"""Fault points: where a test may have this process killed for real.

`CKD_FAULT_AT=POINT:N[:ACTION][,POINT:N...]` makes the process send itself SIGKILL (ACTION `kill`,
the default) or SIGSTOP (`stop`) the N-th time it reaches POINT; unset, `fault()` does nothing.
The points are named where they are called: `train` (a training step), `pull` and `push` (halfway
through pulling a model or pushing a batch: the header sent, the data not), `receive` (a batch's
header read, its data not), `store` (a batch inserted, the transaction not committed), `ack` (the
batch committed, the acknowledgement not sent), `checkpoint`, `metrics` and `coordinator-state`
(half of the file's bytes written), `barrier` (the coordinator, a peer just arrived at a barrier),
`leave` (a peer heard at the last barrier that the run ended, the coordinator not yet told).
The kill is a real one: nothing is flushed, no handler runs, as when a machine loses power.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

ENV = "CKD_FAULT_AT"
ACTIONS = {"kill": signal.SIGKILL, "stop": signal.SIGSTOP}

_counts: dict[str, int] = {}
_lock = threading.Lock()
_plan: dict[str, tuple[int, str]] | None = None


def parse(text: str) -> dict[str, tuple[int, str]]:
    """POINT:N[:ACTION],... -> {point: (n, action)}; ValueError naming a bad item."""
    plan = {}
    for item in text.split(","):
        if not item.strip():
            continue
        point, _, rest = item.strip().partition(":")
        n, _, action = rest.partition(":")
        action = action or "kill"
        if not point or not n.isdigit() or int(n) < 1 or action not in ACTIONS:
            raise ValueError(f"bad {ENV} item {item!r}; write POINT:N or POINT:N:stop, N >= 1")
        plan[point] = (int(n), action)
    return plan


def fault(point: str, settle: float = 0.0) -> None:
    """Count a visit to `point`; on the visit CKD_FAULT_AT names, kill (or stop) this process.

    `settle` seconds pass first, so what was handed to the network before the fault is sent."""
    global _plan
    if _plan is None:
        _plan = parse(os.environ.get(ENV, ""))
    if point not in _plan:
        return
    with _lock:
        _counts[point] = _counts.get(point, 0) + 1
        fire = _counts[point] == _plan[point][0]
    if not fire:
        return
    action = _plan[point][1]
    print(f"fault: {action} at {point} #{_plan[point][0]} (pid {os.getpid()})", file=sys.stderr, flush=True)
    time.sleep(settle)
    os.kill(os.getpid(), ACTIONS[action])
