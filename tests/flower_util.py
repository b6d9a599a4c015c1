"""Shared settings and helpers of the Flower tests."""

import os
import signal
import threading

# A small fmnist split on which counterfactuals are made in round 1 (a few seconds in-process).
SMALL = {"peers": 3, "rounds": 1, "epochs": 2, "retrain-epochs": 1, "train-per-peer": 400, "test-limit": 1000}
# --rounds auto, small: round 1 has a peer that improves on its validation slice, a later round none,
# well before the cap (tests/test_rounds_auto.py runs it in every runtime)
AUTO = {
    "peers": 3,
    "rounds": "auto",
    "max-rounds": 6,
    "learners": "mlp",
    "train-per-peer": 400,
    "epochs": 1,
    "retrain-epochs": 1,
    "validation-share": 0.2,
    "test-limit": 300,
}


def group_members(pgid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the processes in process group `pgid` (Linux /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = open(f"/proc/{entry}/stat").read()
            if int(stat.rsplit(")", 1)[1].split()[2]) == pgid:
                out.append((int(entry), open(f"/proc/{entry}/cmdline").read().replace("\0", " ")))
        except (OSError, IndexError, ValueError):
            continue  # it ended while we looked
    return out


class ClientAppFreezer:
    """Stops (SIGSTOP) every ClientApp process a SuperNode starts from now on: a peer whose
    SuperNode stays connected and sends heartbeats, but whose app never answers. The SuperNode
    leads its own process group, in which its SuperExec starts the ClientApps."""

    def __init__(self, supernode_pid: int):
        self.pid = supernode_pid
        self.frozen: list[int] = []
        self.done = threading.Event()
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        while not self.done.wait(0.05):
            for child, cmdline in group_members(self.pid):
                if "flwr-clientapp" in cmdline and child not in self.frozen:
                    try:
                        os.kill(child, signal.SIGSTOP)
                        self.frozen.append(child)
                    except ProcessLookupError:
                        pass

    def stop(self) -> None:
        self.done.set()
        for child in self.frozen:
            try:
                os.kill(child, signal.SIGCONT)
            except ProcessLookupError:
                pass
