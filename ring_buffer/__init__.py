"""Per-stream bounded buffers of mono audio samples (float32, or 16-bit PCM to save memory),
addressed by absolute sample index.

See :mod:`ring_buffer.buffer` for the slot model and :mod:`ring_buffer.errors` for what a read
raises. :class:`RingBuffer` is imported on first use, so that importing the errors alone does not
import numpy (the command line builds its parser without it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ring_buffer.errors import (
    RingBufferError,
    WindowNotWritten,
    WindowOverwritten,
    WindowUnavailable,
)

if TYPE_CHECKING:  # pragma: no cover
    from ring_buffer.buffer import RingBuffer

__all__ = [
    "RingBuffer",
    "RingBufferError",
    "WindowNotWritten",
    "WindowOverwritten",
    "WindowUnavailable",
]


def __getattr__(name: str) -> Any:
    if name == "RingBuffer":
        from ring_buffer.buffer import RingBuffer

        return RingBuffer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
