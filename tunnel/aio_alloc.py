"""Allocator tuning for processes that move bulk data through the tunnel.

Why: every 16 KiB frame allocates and frees a few 16 KiB ``bytes`` (aiohttp's
message, the core's payload slice, the masked copy on the client side) and
``read`` joins up to a few hundred KiB. With glibc's default, dynamic trim and
mmap thresholds, freed memory at the top of the heap keeps going back to the
kernel and is faulted in again on the next batch: measured on the tunnel
benchmark, 20,000-200,000 page faults per GB moved per process and ~25-30 %
more CPU per byte than with fixed thresholds (faults then ~300-800 per GB).

``tune_allocator()`` fixes the thresholds with ``mallopt`` (glibc only). The
cost is memory the process keeps instead of returning: at most the trim
threshold of free heap. Call it once at start-up of arc-relay, arc-agent and
arc-proxy (the benchmark does); it is not called implicitly because it changes
the whole process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

__all__ = ["tune_allocator"]

log = logging.getLogger("tunnel")

# mallopt(3) parameter numbers (glibc malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

# Free heap kept before trimming: a few session windows' worth of frames.
TRIM_THRESHOLD = 64 * 1024 * 1024
# Extra heap requested per sbrk, so batches of frames do not grow it step by step.
TOP_PAD = 16 * 1024 * 1024
# Allocations above this use mmap: well above a read() join (<= 1 MiB).
MMAP_THRESHOLD = 4 * 1024 * 1024


def tune_allocator(
    trim_threshold: int = TRIM_THRESHOLD,
    top_pad: int = TOP_PAD,
    mmap_threshold: int = MMAP_THRESHOLD,
) -> bool:
    """Fix glibc malloc's thresholds for this process (see the module docstring).

    Args:
        trim_threshold: M_TRIM_THRESHOLD in bytes.
        top_pad: M_TOP_PAD in bytes.
        mmap_threshold: M_MMAP_THRESHOLD in bytes (glibc caps it at 32 MiB).

    Returns:
        True if applied; False where the C library is not glibc (no change).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok = all(
        mallopt(param, value) == 1
        for param, value in (
            (_M_MMAP_THRESHOLD, mmap_threshold),
            (_M_TRIM_THRESHOLD, trim_threshold),
            (_M_TOP_PAD, top_pad),
        )
    )
    log.debug("allocator thresholds fixed: %s", ok)
    return ok
