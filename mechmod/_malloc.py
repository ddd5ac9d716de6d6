"""glibc's allocator, set for the large activations of CPU forwards.

By default glibc returns a freed block of more than ~128 KB to the OS (its
threshold for serving blocks from their own mappings grows as such blocks
are freed, up to 32 MB, and the top of the heap is trimmed past twice
that), so the activations of every forward on a CPU model are faulted in
page by page again: on the behavioural benchmark (216 cases), ~200,000
minor page faults per run, a tenth of its CPU time. :func:`keep_freed_memory`
asks glibc to serve blocks up to 32 MB from the heap and to keep up to
2 GiB of freed memory at its top for the next forward. The process's peak
memory is unchanged; it stays at that peak after the run instead of
shrinking. Elsewhere than on glibc (macOS, musl) it does nothing."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
#: the largest block glibc lets the heap serve (HEAP_MAX_SIZE / 2 on 64-bit)
HEAP_BLOCK_MAX = 32 * 2**20
#: freed memory kept at the top of the heap (a C int: at most 2 GiB - 1)
KEEP_TOP = 2**31 - 1

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Set glibc's thresholds (once per process); whether they are set."""
    global _applied
    if _applied is None:
        _applied = _set_thresholds()
    return _applied


def _set_thresholds() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    # both, or the fixed default threshold (128 KB) would replace the dynamic one: more faults, not fewer
    return bool(mallopt(M_MMAP_THRESHOLD, HEAP_BLOCK_MAX)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_TOP))
