"""Settings every ckd process makes once, before any work: torch's threads and the C allocator.

A search or training step allocates tensors of tens of MB (1,024 images through a convolution:
25 MB an activation) and frees them a moment later. glibc serves a block that large with a fresh
mmap by default (above a threshold that only grows once such a block is freed) and gives freed
memory at the heap's top back to the system, so the next step's block is new pages again, each
zeroed by the kernel on first touch. Keeping blocks up to 32 MB in the heap and not trimming it
makes the next step reuse the same pages. What is kept was touched once already, so a process's
peak memory barely moves (bench/scale.py's peer processes: 9 MB lower to 25 MB higher than before).
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed on 64-bit systems
TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Ask glibc to serve blocks up to 32 MB from its heap and to keep freed memory for reuse.
    False where the C library is not glibc (no mallopt) or refused a setting: nothing changes."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the process runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def configure_process(threads: int) -> None:
    """torch's intra-op threads for this process, and the allocator setting above."""
    import torch

    torch.set_num_threads(threads)
    keep_freed_memory()
