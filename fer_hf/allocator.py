"""PyTorch on a CPU without page faults: let the process keep the memory it frees.

PyTorch allocates each batch's activations afresh (megabytes a layer) and frees them after it. glibc hands blocks
that large straight back to the system (mmap'd, or trimmed off the heap's top; a thread other than the main one takes
them from heaps of its own that are unmapped as they empty), so every batch page-faults its memory in again.
Measured on the 2-core VM with the shipped 96 px EfficientNet-Lite0 (`benchmarks/RESULTS.md`, "Cache-sized runs,
PyTorch's allocator and its thread"): up to 1,900 page faults and 2.9 ms of kernel time a face in inference, half
to two thirds of PyTorch's time; on one thread, training went from 57-60 to 77 images/s and
evaluation from 128-145 to 429-443. `fer_hf.train` and the PyTorch inference backend call `keep_freed_memory()` on a
CPU; the cost is a process whose resident memory stays near its peak (up to KEEP_FREED_BYTES more).
"""

from __future__ import annotations

import ctypes
import sys

# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
KEEP_FREED_BYTES = 1 << 30


def keep_freed_memory() -> bool:
    """Have glibc keep freed blocks (up to KEEP_FREED_BYTES) for the next allocation, in one arena for all threads.
    True where the C library took the setting (glibc on Linux); elsewhere nothing changes. Process-wide."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the process runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # All three: a high mmap threshold alone leaves the trimming, a high trim threshold alone the mmap'd blocks, and
    # threads besides the main one (predict's reader and model threads, the web demo's) would use arenas of their own.
    return all([mallopt(M_MMAP_THRESHOLD, KEEP_FREED_BYTES), mallopt(M_TRIM_THRESHOLD, KEEP_FREED_BYTES),
                mallopt(M_ARENA_MAX, 1)])
