"""Keep freed memory in the process that runs the network, instead of giving it back at once.

glibc serves every allocation above its mmap threshold (at most 32 MB) with a fresh
``mmap`` and unmaps it on free, and trims the heap top above 128 KB. CloSe-Net's edge
features are 40-200 MB tensors, so every training step and prediction chunk faulted its
memory in page by page again: on this project's CPU a fine-tuning step spent more time in
the kernel than in torch (benchmarks/allocator.py prints the difference). Raising both
thresholds lets the allocator reuse the same memory from step to step; the peak stays
what the largest step needs.

Only for the processes that run torch (the worker, the command line), never Blender's.
"""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 30  # allocations above 1 GB still get their own mapping
TRIM_THRESHOLD = 512 << 20  # give memory back once 512 MB lie free at the heap top
# a user's own malloc settings win
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def keep_freed_memory(mmap_threshold: int = MMAP_THRESHOLD,
                      trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Raise glibc's mmap and trim thresholds for this process; True if they were set.

    Does nothing (False) off Linux, without glibc's ``mallopt``, or when the user set
    malloc variables of their own.
    """
    if not sys.platform.startswith("linux") or any(os.environ.get(k) for k in _USER_SETTINGS):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # glibc returns 1 on success (musl's stub returns 0: nothing to do there)
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        mallopt(_M_TRIM_THRESHOLD, trim_threshold))
