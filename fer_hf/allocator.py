"""PyTorch on a CPU without page faults: let the process keep the memory it frees.

PyTorch allocates each batch's activations afresh (megabytes a layer) and frees them after it. glibc hands blocks
that large straight back to the system (mmap'd, or trimmed off the heap's top; a thread other than the main one takes
them from heaps of its own that are unmapped as they empty), so every batch page-faults its memory in again: on the
2-core VM that was half or more of PyTorch's inference time and a quarter of its training time at 96 px
(`benchmarks/RESULTS.md`, "Cache-sized runs, PyTorch's allocator and its thread"). `fer_hf.train`, `predict` and
`evaluate` (through the PyTorch backend) call `keep_freed_memory()` on a CPU; the cost is a process whose resident
memory stays near its peak. It changes the whole process's allocator, so it stands aside where the user set glibc's
malloc knobs themselves, and `FER_HF_KEEP_FREED_MEMORY=0` turns it off.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

logger = logging.getLogger(__name__)

# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
# Freed blocks up to this size stay with the process: above the largest activation of any model fer_hf trains
# (tens of megabytes a batch), well below the memory of any machine that trains one.
KEEP_FREED_BYTES = 1 << 30
# Older glibc refuses an mmap threshold above HEAP_MAX_SIZE / 2 (32 MiB on 64-bit): the most it takes there.
OLD_GLIBC_MMAP_MAX = 4 * 1024 * 1024 * ctypes.sizeof(ctypes.c_long)
OPT_OUT = "FER_HF_KEEP_FREED_MEMORY"
# The user's own settings of glibc's allocator, which win.
USER_MALLOC_SETTINGS = ("MALLOC_ARENA_MAX", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")


def keep_freed_memory() -> bool:
    """Have glibc keep freed blocks for the next allocation (mmap and trim thresholds of KEEP_FREED_BYTES, one arena
    for all threads). Process-wide. True where it was set; False, with nothing changed, off Linux/glibc, where
    FER_HF_KEEP_FREED_MEMORY=0 or where the user tuned glibc's malloc through the environment."""
    if os.environ.get(OPT_OUT, "1") == "0" or not sys.platform.startswith("linux"):
        return False
    if any(name in os.environ for name in USER_MALLOC_SETTINGS) or "glibc.malloc" in os.environ.get(
            "GLIBC_TUNABLES", ""):
        logger.debug("glibc's malloc is tuned through the environment: left as it is.")
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the process runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # The mmap threshold first, and the rest only once it is taken: a trim threshold alone would freeze the mmap
    # threshold at its small start (glibc stops adapting it), and more blocks would be mmap'd than before.
    threshold = next((value for value in (KEEP_FREED_BYTES, OLD_GLIBC_MMAP_MAX) if mallopt(M_MMAP_THRESHOLD, value)),
                     None)
    if threshold is None:  # not glibc (musl's mallopt does nothing)
        return False
    # A high trim threshold keeps the heap's freed top; one arena keeps other threads off heaps that are unmapped.
    mallopt(M_TRIM_THRESHOLD, KEEP_FREED_BYTES)
    mallopt(M_ARENA_MAX, 1)
    logger.info("Keeping freed memory in this process (blocks up to %d MiB; %s=0 turns it off): PyTorch on a CPU "
                "would page-fault every batch's activations in again.", threshold >> 20, OPT_OUT)
    return True
