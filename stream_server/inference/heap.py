"""Giving memory that was freed back to the system.

Batches allocate large transient arrays (windows, spectrograms, layer outputs). glibc's
allocator keeps what they free in its arenas for reuse, so a server that was busy and is now
idle would keep its peak size: about 0.8 MB per stream after 100 streams' first windows, more
than their state. :func:`trim_heap` hands those free pages back (``malloc_trim(0)``, a few
milliseconds for 100 MB). With another C library it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from functools import cache


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        fn = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    trim: Callable[[int], int] = fn
    return trim


def trim_heap() -> bool:
    """Return the allocator's free memory to the system; whether anything was returned."""
    fn = _malloc_trim()
    return fn is not None and bool(fn(0))
