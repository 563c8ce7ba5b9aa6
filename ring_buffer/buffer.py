"""A bounded buffer of mono float32 audio samples, addressed by absolute sample index.

Slot model
----------
Every sample a stream ever produced has an *absolute index*: the first sample written is index 0,
the next is 1, and so on, monotonically for the life of the stream. The buffer preallocates one
float32 array of ``capacity`` slots and stores absolute index ``i`` in slot ``i % capacity``.
Writing index ``i`` therefore overwrites index ``i - capacity``, so the buffer always holds the
contiguous range ``[oldest, written)`` where ``written`` is the total number of samples written
so far and ``oldest == max(0, written - capacity)``.

A write or read touches at most two contiguous slot ranges: from the starting slot to the end of
the array, then from slot 0 onwards (the "seam" where the slot index wraps).

Read cursor and overruns
------------------------
The owner of the buffer tracks how far it has processed the stream with a read cursor,
``consumed`` (an absolute index, starting at 0), advanced with :meth:`RingBuffer.consume`. When a
write pushes ``oldest`` past ``consumed``, the samples in ``[consumed, new_oldest)`` were lost
before the owner processed them: their count is added to ``overruns`` and ``consumed`` jumps
forward to the new ``oldest``.

Storage
-------
Samples are held as float32, or with ``pcm16=True`` as 16-bit PCM (``round(x * 32768)``, clipped
to ``[-32768, 32767]``): half the memory, and exact for audio that came as 16-bit PCM (multiples
of ``1 / 32768`` in ``[-1, 1)``); other values are rounded to the nearest such multiple and
clipped to that range. Reads give float32 either way.

All counts, indices and lengths here are in samples. The buffer does no locking: one owner (or
one thread at a time) must use it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from ring_buffer.errors import WindowNotWritten, WindowOverwritten

__all__ = ["PCM16_SCALE", "RingBuffer", "to_pcm16"]

#: Full scale of 16-bit PCM storage: a stored value ``v`` is the sample ``v / PCM16_SCALE``.
PCM16_SCALE = 32768.0


def to_pcm16(samples: npt.NDArray[np.float32]) -> npt.NDArray[np.int16]:
    """``(n,)`` float32 samples as the 16-bit PCM a ``pcm16`` buffer stores: ``round(x * 32768)``,
    clipped to ``[-32768, 32767]``, NaN as 0 (exact for samples that came as 16-bit PCM)."""
    scaled = np.nan_to_num(np.rint(samples * PCM16_SCALE), nan=0.0, posinf=32767, neginf=-32768)
    pcm: npt.NDArray[np.int16] = np.clip(scaled, -32768, 32767).astype(np.int16)
    return pcm


class RingBuffer:
    """A fixed-capacity buffer of mono float32 samples, addressed by absolute sample index.

    Holds the newest ``capacity`` samples written, i.e. absolute indices ``[oldest, written)``.
    Reads return copies of shape ``(n,)`` and dtype float32.
    """

    __slots__ = ("_buf", "_capacity", "_consumed", "_overruns", "_written")

    def __init__(self, capacity: int, *, pcm16: bool = False) -> None:
        """Create an empty buffer holding at most ``capacity`` samples.

        :param capacity: number of samples the buffer can hold; must be > 0.
        :param pcm16: store samples as 16-bit PCM (see the module docstring), not float32.
        :raises ValueError: if ``capacity`` is not positive.
        """
        if capacity <= 0:
            raise ValueError(f"capacity must be > 0 samples, got {capacity}")
        self._capacity = capacity
        self._buf: npt.NDArray[np.float32] | npt.NDArray[np.int16] = (
            np.zeros(capacity, dtype=np.int16) if pcm16 else np.zeros(capacity, dtype=np.float32)
        )
        self._written = 0
        self._consumed = 0
        self._overruns = 0

    @property
    def capacity(self) -> int:
        """Maximum number of samples held at once."""
        return self._capacity

    @property
    def pcm16(self) -> bool:
        """Whether samples are stored as 16-bit PCM."""
        return self._buf.dtype == np.int16

    @property
    def written(self) -> int:
        """Total samples ever written: the absolute index one past the newest sample."""
        return self._written

    @property
    def oldest(self) -> int:
        """Absolute index of the oldest sample still held: ``max(0, written - capacity)``."""
        return max(0, self._written - self._capacity)

    @property
    def consumed(self) -> int:
        """Read cursor (absolute sample index): samples before it have been processed or lost.

        Always satisfies ``oldest <= consumed <= written``.
        """
        return self._consumed

    @property
    def overruns(self) -> int:
        """Total samples overwritten before the read cursor reached them (lost unread)."""
        return self._overruns

    def __len__(self) -> int:
        """Number of samples currently held: ``written - oldest``."""
        return self._written - self.oldest

    def __repr__(self) -> str:
        pcm = ", pcm16" if self.pcm16 else ""
        return (
            f"RingBuffer(capacity={self._capacity}{pcm}, held=[{self.oldest}, {self._written}), "
            f"consumed={self._consumed}, overruns={self._overruns})"
        )

    def write(self, samples: npt.NDArray[Any]) -> int:
        """Append samples to the stream.

        :param samples: 1-D array of shape ``(m,)``, any length ``m >= 0``; other dtypes are
            converted to float32 (then to 16-bit PCM when the buffer stores that). If
            ``m > capacity`` only the last ``capacity`` samples are stored, but all ``m`` count
            as written (the earlier ones as immediately overwritten). As 16-bit PCM, NaN is
            stored as 0 and infinities as full scale.
        :returns: the new ``written`` (absolute index one past the newest sample).
        :raises ValueError: if ``samples`` is not 1-D.
        """
        data: npt.NDArray[Any] = np.asarray(samples, dtype=np.float32)
        if data.ndim != 1:
            raise ValueError(f"samples must be 1-D, got shape {data.shape}")
        m = data.shape[0]
        if m == 0:
            return self._written
        cap = self._capacity
        if m > cap:
            data = data[m - cap :]
        if self.pcm16:
            data = to_pcm16(data)
        k = data.shape[0]
        slot = (self._written + m - k) % cap
        first = min(k, cap - slot)
        self._buf[slot : slot + first] = data[:first]
        self._buf[: k - first] = data[first:]
        self._written += m
        new_oldest = self.oldest
        if new_oldest > self._consumed:
            self._overruns += new_oldest - self._consumed
            self._consumed = new_oldest
        return self._written

    def consume(self, upto: int) -> None:
        """Advance the read cursor to absolute sample index ``upto``.

        Idempotent and monotonic: a value at or below the current cursor does nothing, and a
        value past ``written`` is clamped to ``written``.
        """
        self._consumed = max(self._consumed, min(upto, self._written))

    def read(self, start: int, n: int) -> npt.NDArray[np.float32]:
        """Return a copy of samples ``[start, start + n)``.

        :param start: absolute sample index of the first sample, >= 0.
        :param n: number of samples, ``0 <= n <= capacity``.
        :returns: a new contiguous float32 array of shape ``(n,)``.
        :raises ValueError: if ``start < 0``, ``n < 0`` or ``n > capacity``.
        :raises WindowOverwritten: if ``start < oldest``.
        :raises WindowNotWritten: if ``start + n > written``.
        """
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        self._check_n(n)
        if start < self.oldest:
            raise WindowOverwritten(
                f"samples [{start}, {start + n}) were overwritten; {self._held()}"
            )
        if start + n > self._written:
            raise WindowNotWritten(
                f"samples [{start}, {start + n}) are not written yet; {self._held()}"
            )
        return self._copy(start, n)

    def latest(self, n: int) -> npt.NDArray[np.float32]:
        """Return a copy of the newest ``n`` samples, ``[written - n, written)``.

        :param n: number of samples, ``0 <= n <= capacity``.
        :returns: a new contiguous float32 array of shape ``(n,)``.
        :raises ValueError: if ``n < 0`` or ``n > capacity``.
        :raises WindowNotWritten: if fewer than ``n`` samples have been written.
        """
        self._check_n(n)
        if n > self._written:
            raise WindowNotWritten(
                f"latest {n} samples requested but only {self._written} are written; {self._held()}"
            )
        return self._copy(self._written - n, n)

    def _check_n(self, n: int) -> None:
        if n < 0 or n > self._capacity:
            raise ValueError(f"n must be in [0, {self._capacity}] samples, got {n}")

    def _held(self) -> str:
        return f"buffer holds [{self.oldest}, {self._written})"

    def _copy(self, start: int, n: int) -> npt.NDArray[np.float32]:
        out = np.empty(n, dtype=np.float32)
        slot = start % self._capacity
        first = min(n, self._capacity - slot)
        out[:first] = self._buf[slot : slot + first]
        out[first:] = self._buf[: n - first]
        if self.pcm16:
            out *= np.float32(1.0 / PCM16_SCALE)  # a power of two: exact
        return out
