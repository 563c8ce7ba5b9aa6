"""The server process's memory beyond its streams' state.

Batches allocate large transient arrays (windows, spectrograms, layer outputs). glibc's
allocator keeps what they free in its arenas for reuse, so a server that was busy and is now
idle would keep its peak size: about 0.8 MB per stream after 100 streams' first windows, more
than their state. :func:`trim_heap` hands those free pages back (``malloc_trim(0)``, a few
milliseconds for 100 MB). With another C library it does nothing.

On a CPU, oneDNN compiles a kernel for each layer and input shape it meets and keeps them (1,024
by default): tens of MB that grow with the batch shapes a server has seen, not with its streams.
:func:`cap_kernel_cache` bounds them (``engine.kernel_cache``); the stream table computes few
shapes (:data:`~stream_server.inference.musicnn_stream.FRAME_BUCKET`), and the runner's warm-up
meets them at load.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
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


#: The environment variable oneDNN reads its kernel cache's capacity from, once, when it first
#: compiles a kernel in a process.
KERNEL_CACHE_ENV = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"


def cap_kernel_cache(entries: int) -> int:
    """Keep at most ``entries`` compiled oneDNN kernels in this process; the capacity in force.

    Takes effect only before the process's first kernel (call it before a model runs); a
    capacity already set in the environment is left as it is (and returned).
    """
    if entries < 0:
        raise ValueError(f"entries must be >= 0, got {entries}")
    return int(os.environ.setdefault(KERNEL_CACHE_ENV, str(entries)))
