"""PCM normalisation: raw interleaved bytes -> mono float32 -> model sample rate.

Everything here is pure computation on numpy arrays (no I/O, no event loop):

* :func:`validate_format` checks an announced PCM format (sample format, rate in Hz, channels).
* :func:`pcm_to_float` / :func:`downmix` / :class:`PcmDecoder` turn interleaved little-endian PCM
  bytes into float32 samples in ``[-1, 1)`` (``s16le``) or as sent (``f32le``), mono by mean.
* :class:`StreamingResampler` converts a mono float32 stream from one rate to another, chunk by
  chunk, with a polyphase Hann-windowed sinc filter whose coefficients are those of
  ``torchaudio.functional.resample`` (method ``sinc_interp_hann``); :func:`resample_once` is the
  offline form.

The wire sample formats (``SampleFormat``, ``SAMPLE_FORMATS``) belong to the protocol and are
defined in :mod:`stream_server.messages`; they are re-exported here.

Shapes: "frames" are sampling instants; a multi-channel block is ``(frames, channels)``, a mono
signal is ``(frames,)``. Lengths are counted in samples (frames), rates in Hz.
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from stream_server.errors import AudioFormatError
from stream_server.messages import SAMPLE_FORMATS, SampleFormat

__all__ = [
    "SAMPLE_FORMATS",
    "PcmDecoder",
    "SampleFormat",
    "StreamingResampler",
    "bytes_per_sample",
    "downmix",
    "pcm_to_float",
    "resample_once",
    "validate_format",
]

FloatArray = npt.NDArray[np.float32]

_BYTES_PER_SAMPLE: Final[dict[str, int]] = {"s16le": 2, "f32le": 4}
_DTYPES: Final[dict[str, str]] = {"s16le": "<i2", "f32le": "<f4"}

# Up to this many phases (L) the resampler stores the exact kernel row of every phase, a bank of
# L * taps float32 values. Every common rate pair has L <= 441 (48000, 44100, 32000, 16000, 8000
# -> 22050 or 16000); only unusual, nearly coprime pairs such as 8009 -> 22050 have more.
_MAX_BANK_PHASES: Final = 4096

# Above ``_MAX_BANK_PHASES`` the kernel is tabulated at this many fractional positions per input
# sample (plus one, for the right end) and linearly interpolated in between.
_TABLE_PHASES: Final = 1024

# Kernel values (outputs per block * taps) handled at once by ``process``: bounds its temporary
# memory (a few float32 and int64 arrays of this many values or of one value per output in the
# block) whatever the input length and the rates.
_BLOCK_VALUES: Final = 1 << 16


def bytes_per_sample(fmt: SampleFormat) -> int:
    """Size in bytes of one sample of one channel in format ``fmt`` (2 for s16le, 4 for f32le)."""
    try:
        return _BYTES_PER_SAMPLE[fmt]
    except KeyError:
        raise AudioFormatError(
            f"unsupported sample format {fmt!r}; expected one of {list(SAMPLE_FORMATS)}"
        ) from None


def validate_format(
    sample_rate: int,
    channels: int,
    fmt: str,
    *,
    min_rate: int = 8000,
    max_rate: int = 384000,
    max_channels: int = 8,
) -> None:
    """Check an announced PCM format.

    Args:
        sample_rate: frames per second (Hz); must be an integer in ``[min_rate, max_rate]``.
        channels: interleaved channels per frame; must be an integer in ``[1, max_channels]``.
        fmt: sample format name; must be one of :data:`SAMPLE_FORMATS`.

    Raises:
        AudioFormatError: naming the offending value and the allowed range or set.
    """
    if fmt not in SAMPLE_FORMATS:
        raise AudioFormatError(
            f"unsupported sample format {fmt!r}; expected one of {list(SAMPLE_FORMATS)}"
        )
    if (
        isinstance(sample_rate, bool)
        or not isinstance(sample_rate, int)
        or not min_rate <= sample_rate <= max_rate
    ):
        raise AudioFormatError(
            f"unsupported sample rate {sample_rate!r} Hz; "
            f"expected an integer in [{min_rate}, {max_rate}] Hz"
        )
    if (
        isinstance(channels, bool)
        or not isinstance(channels, int)
        or not 1 <= channels <= max_channels
    ):
        raise AudioFormatError(
            f"unsupported channel count {channels!r}; expected an integer in [1, {max_channels}]"
        )


def pcm_to_float(data: bytes, fmt: SampleFormat, channels: int) -> FloatArray:
    """Parse interleaved little-endian PCM bytes.

    Args:
        data: interleaved samples; ``len(data)`` must be a multiple of
            ``bytes_per_sample(fmt) * channels`` (one frame).
        fmt: ``"s16le"`` (scaled by 1/32768 into ``[-1, 1)``) or ``"f32le"`` (NaN and +-inf
            replaced by 0, then clipped to full scale ``[-1, 1]``).
        channels: number of interleaved channels (>= 1).

    Returns:
        float32 array of shape ``(frames, channels)``.

    Raises:
        ValueError: if ``data`` does not hold a whole number of frames, or ``channels < 1``.
        AudioFormatError: if ``fmt`` is unknown.
    """
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    frame_bytes = bytes_per_sample(fmt) * channels
    if len(data) % frame_bytes:
        raise ValueError(
            f"{len(data)} bytes is not a whole number of {frame_bytes}-byte frames "
            f"({fmt}, {channels} channel(s))"
        )
    raw = np.frombuffer(data, dtype=_DTYPES[fmt])
    if fmt == "s16le":
        out = raw.astype(np.float32)
        out *= np.float32(1.0 / 32768.0)
    else:
        out = np.nan_to_num(raw.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        np.clip(out, -1.0, 1.0, out=out)  # full scale: louder samples would only overflow features
    return out.reshape(-1, channels)


def downmix(frames: npt.NDArray[np.floating]) -> FloatArray:
    """Average the channels: ``(frames, channels)`` -> ``(frames,)`` float32.

    A 1-D input is taken as already mono and returned as a float32 copy.
    """
    arr = np.asarray(frames)
    if arr.ndim == 1:
        return arr.astype(np.float32, copy=True)
    if arr.ndim != 2:
        raise ValueError(f"expected shape (frames, channels), got {arr.shape}")
    if arr.shape[1] == 1:
        return arr[:, 0].astype(np.float32, copy=True)
    mean: FloatArray = arr.mean(axis=1, dtype=np.float32)
    return mean


class PcmDecoder:
    """Stateful: bytes of interleaved PCM in any chunking -> mono float32 at the source rate.

    Keeps a partial frame (bytes that do not complete a frame) across calls, so a frame split
    between two network messages is decoded once both halves have arrived.
    """

    def __init__(self, fmt: SampleFormat, channels: int) -> None:
        if channels < 1:
            raise AudioFormatError(f"unsupported channel count {channels!r}; expected >= 1")
        self._fmt: SampleFormat = fmt
        self._channels = channels
        self._frame_bytes = bytes_per_sample(fmt) * channels
        self._pending = b""

    @property
    def fmt(self) -> SampleFormat:
        """The wire sample format."""
        return self._fmt

    @property
    def channels(self) -> int:
        """Interleaved channels per frame."""
        return self._channels

    @property
    def pending_bytes(self) -> int:
        """Bytes held back because they do not yet complete a frame (``< frame size``)."""
        return len(self._pending)

    def decode(self, data: bytes) -> FloatArray:
        """Append ``data`` and return every newly completed frame, downmixed.

        Returns:
            float32 array of shape ``(n,)``: one mono sample per complete frame (``n`` may be 0).
        """
        buf = self._pending + bytes(data) if self._pending else bytes(data)
        usable = len(buf) - len(buf) % self._frame_bytes
        self._pending = buf[usable:]
        if usable == 0:
            return np.zeros(0, dtype=np.float32)
        return downmix(pcm_to_float(buf[:usable], self._fmt, self._channels))

    def reset(self) -> None:
        """Drop any pending partial frame."""
        self._pending = b""


class StreamingResampler:
    """Stateful band-limited resampler from ``in_rate`` to ``out_rate`` (Hz) for a mono stream.

    Polyphase windowed-sinc filter: with ``g = gcd(in_rate, out_rate)``, ``L = out_rate / g``
    and ``M = in_rate / g``, output sample ``k`` sits at input time ``k * M / L`` (in input
    samples) and is a dot product of ``taps`` input samples around that time with a kernel row
    for the phase ``k mod L``, whose fractional offset is ``(k * M mod L) / L`` input samples. The
    kernel is that of ``torchaudio.functional.resample(..., resampling_method="sinc_interp_hann")``
    with the same ``lowpass_filter_width`` and ``rolloff``: cutoff
    ``rolloff * min(in_rate, out_rate) / 2``, a Hann window spanning ``lowpass_filter_width`` zero
    crossings on each side, zeros assumed before the first input sample.

    Kernel rows:

    * ``L <= 4096`` (every common rate pair: 48000, 44100, 32000, 16000 or 8000 Hz to 22050 or
      16000 Hz has ``L <= 441``): a bank of the ``L`` exact rows, computed once in float64 and
      stored as float32 (``(L, taps)``); the output matches torchaudio's to float32 rounding.
    * ``L > 4096`` (nearly coprime pairs such as 8009 -> 22050): the kernel is tabulated once at
      the 1025 fractional offsets ``p / 1024`` (``p = 0 .. 1024``) and each output's row is the
      linear interpolation between the two tabulated rows around its offset. The table holds
      ``2 * 1024 * taps`` float32 values whatever ``L``. The interpolation error of a tap is at
      most ``max|h''| / (8 * 1024**2)`` (``h``: the kernel as a function of the offset in input
      samples; about ``4e-7``), so an output differs from the exact filter's by at most that
      times the sum of ``|x|`` over its taps, in practice far less (measured against torchaudio's
      filter in float64 on a test signal peaking near full scale: ``4.4e-7`` for 8009 -> 22050,
      ``1.2e-7`` for 44101 -> 16000, ``2e-7`` for 384001 -> 22050; float32 torchaudio is itself
      off by about ``1e-4`` at such rates).

    Cost: every output sample costs ``taps`` multiply-adds (``taps`` is about
    ``2 * lowpass_filter_width * max(1, in_rate / out_rate) / rolloff + 2``: 16 when upsampling
    with the defaults, about 214 for 384000 -> 22050), so the work of a call is linear in the
    samples in and out whatever the rates. Outputs are computed in blocks of about
    ``65536 / taps``, so the temporary memory of a call is a few MB beyond its input and output
    arrays, whatever the rates and the input length.

    Feeding a signal in chunks of any size (including 0 or 1 sample) gives the same output as
    feeding it at once (up to float32 rounding): the filter state is an input history buffer
    and the absolute output index. Latency: ``process`` holds back the right-hand context it
    needs, about ``lowpass_filter_width * M / (rolloff * min(L, M)) + 2`` input samples
    (about 16 samples for 48000 -> 22050).

    Length rule: after ``flush`` the total number of output samples for ``n`` input samples is
    ``ceil(n * out_rate / in_rate)``, the same as ``torchaudio.functional.resample``.

    When ``in_rate == out_rate`` it is a pass-through (returns copies, holds nothing back).
    """

    def __init__(
        self,
        in_rate: int,
        out_rate: int,
        *,
        lowpass_filter_width: int = 6,
        rolloff: float = 0.99,
    ) -> None:
        if int(in_rate) != in_rate or in_rate <= 0:
            raise ValueError(f"in_rate must be a positive integer (Hz), got {in_rate!r}")
        if int(out_rate) != out_rate or out_rate <= 0:
            raise ValueError(f"out_rate must be a positive integer (Hz), got {out_rate!r}")
        if int(lowpass_filter_width) != lowpass_filter_width or lowpass_filter_width <= 0:
            raise ValueError(
                f"lowpass_filter_width must be a positive integer, got {lowpass_filter_width!r}"
            )
        if not 0.0 < rolloff <= 1.0:
            raise ValueError(f"rolloff must be in (0, 1], got {rolloff!r}")
        self._in_rate = int(in_rate)
        self._out_rate = int(out_rate)
        self._lpw = int(lowpass_filter_width)
        self._rolloff = float(rolloff)

        g = math.gcd(self._in_rate, self._out_rate)
        self._up = self._out_rate // g  # L
        self._down = self._in_rate // g  # M
        self._passthrough = self._up == self._down

        # Cutoff in units of the reduced rates, and the half-width of the kernel support in
        # input samples; ``width`` is torchaudio's padding for the same parameters.
        self._base_freq = min(self._up, self._down) * self._rolloff
        self._width = math.ceil(self._lpw * self._down / self._base_freq)
        # Taps per output: every input index in [floor(t) - width, floor(t) + width + 1].
        self._taps = 2 * self._width + 2
        # Outputs per block of ``process``.
        self._block = max(1, _BLOCK_VALUES // self._taps)

        # Exact bank ``(L, taps)``, or the table ``(P, taps)`` of rows at offsets p / P with the
        # ``(P, taps)`` differences to the next row (row P is the right end, offset 1).
        self._bank: FloatArray | None = None
        self._table: FloatArray | None = None
        self._slope: FloatArray | None = None
        if not self._passthrough:
            if self._up <= _MAX_BANK_PHASES:
                self._bank = self._kernel_rows(np.arange(self._up, dtype=np.int64))
            else:
                offsets = np.arange(_TABLE_PHASES + 1, dtype=np.float64) / _TABLE_PHASES
                rows = self._kernel_at(offsets)
                self._table = rows[:-1].astype(np.float32)
                self._slope = np.diff(rows, axis=0).astype(np.float32)
        self.reset()

    # ------------------------------------------------------------------ properties

    @property
    def in_rate(self) -> int:
        """Input sample rate in Hz."""
        return self._in_rate

    @property
    def out_rate(self) -> int:
        """Output sample rate in Hz."""
        return self._out_rate

    @property
    def up(self) -> int:
        """Reduced interpolation factor ``L = out_rate / gcd``."""
        return self._up

    @property
    def down(self) -> int:
        """Reduced decimation factor ``M = in_rate / gcd``."""
        return self._down

    @property
    def taps(self) -> int:
        """Input samples read per output sample (columns of the kernel bank)."""
        return 1 if self._passthrough else self._taps

    @property
    def exact(self) -> bool:
        """Whether every phase uses its exact kernel row (``L <= 4096``, or a pass-through).

        ``False``: rows are interpolated from the table of 1025 offsets (see the class notes).
        """
        return self._table is None

    @property
    def kernel_bank(self) -> FloatArray:
        """The ``(L, taps)`` float32 kernel rows applied to each phase (row ``j``: phase ``j``).

        Tap ``t`` of row ``j`` multiplies input sample ``floor(j * M / L) - width + t`` relative to
        the start of the current block of ``M`` input samples. For ``L > 4096`` these are the
        interpolated rows the filter uses, built on request (``L * taps`` values).
        """
        if self._passthrough:
            return np.ones((1, 1), dtype=np.float32)
        return self._rows(np.arange(self._up, dtype=np.int64))

    @property
    def samples_in(self) -> int:
        """Input samples received since construction or the last flush/reset."""
        return self._total_in

    @property
    def samples_out(self) -> int:
        """Output samples emitted since construction or the last flush/reset."""
        return self._total_out

    # ------------------------------------------------------------------ kernel

    def _kernel_at(self, offsets: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Exact kernel rows at fractional offsets, shape ``(len(offsets), taps)`` float64.

        Tap ``t`` at offset ``f`` (input samples, in ``[0, 1]``) sits at distance
        ``d = t - width - f`` input samples from the output instant; the weight is ``sinc`` at
        cutoff ``base_freq`` times a Hann window clamped to ``lowpass_filter_width`` zero
        crossings, as in torchaudio.
        """
        d = np.arange(self._taps, dtype=np.float64)[None, :] - self._width - offsets[:, None]
        t = d * (self._base_freq / self._down)
        t = np.clip(t, -self._lpw, self._lpw)
        window = np.cos(t * (math.pi / self._lpw / 2.0)) ** 2
        t *= math.pi
        with np.errstate(invalid="ignore", divide="ignore"):
            sinc = np.where(t == 0.0, 1.0, np.sin(t) / t)
        kernel: npt.NDArray[np.float64] = sinc * window * (self._base_freq / self._down)
        return kernel

    def _kernel_rows(self, phases: npt.NDArray[np.int64]) -> FloatArray:
        """Exact kernel rows of the given phases, shape ``(len(phases), taps)`` float32.

        Phase ``j`` has the offset ``(j * M mod L) / L`` input samples.
        """
        offsets = (phases * self._down % self._up).astype(np.float64) / self._up
        return self._kernel_at(offsets).astype(np.float32)

    def _table_position(
        self, phases: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.int64], FloatArray]:
        """Table row below each phase's offset and the ``[0, 1)`` float32 fraction past it."""
        scaled = (phases * self._down % self._up) * _TABLE_PHASES  # offset * P * L, exact
        row = scaled // self._up
        frac = ((scaled - row * self._up) / self._up).astype(np.float32)
        return row, frac

    def _rows(self, phases: npt.NDArray[np.int64]) -> FloatArray:
        """The float32 ``(len(phases), taps)`` rows the filter applies to the given phases."""
        if self._bank is not None:
            rows: FloatArray = self._bank[phases % self._up]
            return rows
        assert self._table is not None and self._slope is not None
        row, frac = self._table_position(phases)
        rows = self._table[row] + frac[:, None] * self._slope[row]
        return rows

    # ------------------------------------------------------------------ streaming

    def reset(self) -> None:
        """Forget all state: the next sample starts a new stream at output index 0."""
        # ``_buf[0]`` is input sample ``_buf_start`` counted from the start of the current
        # block of M input samples; output ``_n`` (0 <= _n < L after each call) is the next one.
        self._buf: FloatArray = np.zeros(0 if self._passthrough else self._width, np.float32)
        self._buf_start = -self._width
        self._n = 0
        self._total_in = 0
        self._total_out = 0

    def process(self, samples: npt.ArrayLike) -> FloatArray:
        """Feed ``(n,)`` input samples; return the ``(m,)`` float32 output samples now complete.

        ``m`` is about ``n * out_rate / in_rate``; output for the last few input samples is held
        back until the samples after them arrive (or until :meth:`flush`). Work is linear in
        ``n + m``; temporary memory is a few MB beyond the input and output arrays.
        """
        x = np.asarray(samples, dtype=np.float32)
        if x.ndim != 1:
            raise ValueError(f"expected a 1-D mono signal, got shape {x.shape}")
        self._total_in += x.shape[0]
        if self._passthrough:
            self._total_out += x.shape[0]
            return x.copy()
        if x.shape[0]:
            self._buf = np.concatenate((self._buf, x))
        return self._emit()

    def _emit(self) -> FloatArray:
        up, down, width = self._up, self._down, self._width
        end = self._buf_start + self._buf.shape[0]  # first input index not yet received
        # Output n is complete when its last tap floor(n*M/L) + width + 1 is < end.
        last_floor = end - width - 2
        n_end = ((last_floor + 1) * up - 1) // down + 1 if last_floor >= 0 else 0
        count = n_end - self._n
        if count <= 0:
            return np.zeros(0, dtype=np.float32)

        out = np.empty(count, dtype=np.float32)
        frames = sliding_window_view(self._buf, self._taps)
        for lo in range(0, count, self._block):
            hi = min(lo + self._block, count)
            n = np.arange(self._n + lo, self._n + hi, dtype=np.int64)
            windows = frames[n * down // up - (width + self._buf_start)]
            if self._bank is not None:
                out[lo:hi] = np.einsum("ij,ij->i", windows, self._bank[n % up])
            else:
                assert self._table is not None and self._slope is not None
                row, frac = self._table_position(n)
                # Linear in the kernel: the row below, plus frac times the step to the next.
                below = np.einsum("ij,ij->i", windows, self._table[row])
                step = np.einsum("ij,ij->i", windows, self._slope[row])
                out[lo:hi] = below + frac * step

        # Drop input no longer needed and rebase indices onto the block of output n_end.
        blocks = n_end // up
        self._n = n_end - blocks * up
        shift = blocks * down
        keep_from = self._n * down // up - width  # first input the next output reads
        drop = keep_from + shift - self._buf_start
        if drop > 0:
            self._buf = self._buf[drop:].copy()
            self._buf_start += drop
        self._buf_start -= shift
        self._total_out += count
        return out

    def flush(self) -> FloatArray:
        """Emit the remaining output, assuming zeros after the last input sample, and reset.

        After ``flush`` the total output length equals ``ceil(n_in * out_rate / in_rate)``.
        """
        if self._passthrough:
            self.reset()
            return np.zeros(0, dtype=np.float32)
        target = -(-self._total_in * self._up // self._down)
        remaining = target - self._total_out
        out = np.zeros(0, dtype=np.float32)
        if remaining > 0:
            self._buf = np.concatenate((self._buf, np.zeros(self._width + 2, dtype=np.float32)))
            out = self._emit()[:remaining]
        self.reset()
        return out


def resample_once(x: npt.ArrayLike, in_rate: int, out_rate: int) -> FloatArray:
    """Resample a whole ``(n,)`` mono signal from ``in_rate`` to ``out_rate`` Hz (offline).

    Returns a float32 array of ``ceil(n * out_rate / in_rate)`` samples.
    """
    resampler = StreamingResampler(in_rate, out_rate)
    head = resampler.process(np.asarray(x, dtype=np.float32))
    return np.concatenate((head, resampler.flush()))
