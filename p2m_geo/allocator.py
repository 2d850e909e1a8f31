"""CPU memory allocator setting for training and batched inference."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

__all__ = ["keep_freed_cpu_memory"]

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
_M_MMAP_MAX = -4
_MAX_INT = 2**31 - 1


def keep_freed_cpu_memory(trim_threshold_bytes: int = _MAX_INT) -> bool:
    """Make glibc's ``malloc`` serve every allocation from its heap and keep up to
    ``trim_threshold_bytes`` of freed memory in the process instead of returning it.

    By default glibc maps each allocation above its mmap threshold (32 MB at most) with
    ``mmap`` and unmaps it on free, so every training step page-faults its large
    activations in again (a B = 32 level-3 feature matrix alone is 365 MB). Measured with
    ``benchmarks/bm_train.py`` on 2 cores, that kernel time was the reason B = 32 ran slower
    per sample than B = 8. The cost: the process keeps its peak heap. Same effect as
    ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...`` in the environment, applied at run
    time. Returns False (and changes nothing) where the C library is not glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    threshold = max(0, min(int(trim_threshold_bytes), _MAX_INT))
    applied = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, threshold) == 1
    if applied:
        log.debug("glibc malloc: no mmap for large blocks, trim threshold %d bytes", threshold)
    return applied
