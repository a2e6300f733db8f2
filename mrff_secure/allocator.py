"""Keep freed memory in the process instead of returning it to the OS (glibc only).

PyTorch's CPU allocator does not cache. The simulation allocates and frees
many tensors of a few MiB per chunk; with glibc's defaults each is mapped,
touched and unmapped again, and on virtual machines the page faults cost
more than the arithmetic. Raising the mmap and trim thresholds lets the heap
reuse those pages. Elsewhere (macOS, musl) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # glibc's maximum on 64-bit
TRIM_THRESHOLD_BYTES = 1024 * 1024 * 1024

_applied = False


def keep_freed_memory() -> bool:
    """Apply the thresholds once per process; returns whether glibc accepted them."""
    global _applied
    if _applied:
        return True
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    _applied = ok
    return ok
