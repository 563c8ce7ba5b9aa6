"""Per-stream bounded buffers of mono float32 audio samples, addressed by absolute sample index.

See :mod:`ring_buffer.buffer` for the slot model.
"""

from ring_buffer.buffer import RingBuffer

__all__ = ["RingBuffer"]
