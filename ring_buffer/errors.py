"""The ring buffer's own exceptions (the package depends on numpy only)::

    RingBufferError            root of what a ring buffer raises on purpose
    └── WindowUnavailable      a read asked for samples the buffer does not hold
        ├── WindowOverwritten  ... because they were already overwritten (reader too slow)
        └── WindowNotWritten   ... because they have not been written yet

Arguments out of range (a negative start, a length over the capacity) raise :class:`ValueError`.
"""

from __future__ import annotations

__all__ = ["RingBufferError", "WindowNotWritten", "WindowOverwritten", "WindowUnavailable"]


class RingBufferError(Exception):
    """Root of the exceptions a :class:`~ring_buffer.RingBuffer` raises on purpose."""


class WindowUnavailable(RingBufferError):
    """A window ``[start, start + n)`` of samples cannot be read from a ring buffer."""


class WindowOverwritten(WindowUnavailable):
    """The window starts before the oldest sample the buffer still holds."""


class WindowNotWritten(WindowUnavailable):
    """The window ends after the newest sample written so far."""
