"""Settings every ckd process makes once, before any work: torch's threads and the C allocator.

A search or training step allocates tensors of tens of MB (1,024 images through a convolution:
25 MB an activation) and frees them a moment later. glibc serves a block that large with a fresh
mmap by default (above a threshold that only grows once such a block is freed) and gives freed
memory at the heap's top back to the system, so the next step's block is new pages again, each
zeroed by the kernel on first touch. Keeping blocks up to 32 MB in the heap and not trimming it
makes the next step reuse the same pages. What is kept was touched once already, so a process's
peak memory barely moves (bench/scale.py's peer processes: 9 MB lower to 25 MB higher than before).

What is kept is kept per malloc arena, and glibc gives each thread that allocates while another
holds an arena a new one, up to 8 per core: a peer's gRPC threads (decoding a pulled model,
storing a pushed batch) would each keep a high-water mark of their own. Two arenas bound that; a
peer process allocates from its main thread and a few gRPC threads, so they rarely wait on each
other (bench/scale.py: peak memory of a peer process about 30 MB lower, round time unchanged).
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed on 64-bit systems
TRIM_THRESHOLD = 1 << 30
ARENAS = 2


def keep_freed_memory() -> bool:
    """Ask glibc to serve blocks up to 32 MB from its heap, to keep freed memory for reuse, and to
    keep it in at most two arenas. False where the C library is not glibc (no mallopt) or refused a
    setting."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the process runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = ((M_ARENA_MAX, ARENAS), (M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return all([bool(mallopt(param, value)) for param, value in settings])


def configure_process(threads: int) -> None:
    """torch's intra-op threads for this process, and the allocator setting above."""
    import torch

    torch.set_num_threads(threads)
    keep_freed_memory()
