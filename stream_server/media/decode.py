"""Decoding audio files and URLs with PyAV (FFmpeg), packet by packet.

* :func:`probe` reports a source's audio stream parameters (:class:`SourceInfo`).
* :func:`iter_pcm` yields float32 blocks of shape ``(frames, channels)`` of about
  ``chunk_seconds`` each, at a requested sample rate (Hz) and channel count, converting with
  ``av.AudioResampler``. A packet the decoder rejects is skipped and counted
  (:class:`DecodeStats`) rather than ending the decode, so a damaged file or a glitchy live stream
  still yields the audio around the damage.
* :func:`decode_mono` decodes a whole source to one ``(n,)`` float32 mono array.
* :func:`codec_round_trip` encodes mono audio with a lossy codec and decodes it again, as a
  stream or a download would have delivered it (training data).

Sources are anything FFmpeg opens: a file path or a URL (``http(s)://``, ``rtmp://``, ...).
Opening uses a small probe (32 KiB, 0.5 s) so that live streams start quickly.
Every failure to open or decode is raised as :class:`~stream_server.errors.DecodeError` naming the
source.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

import av
import av.error
import numpy as np
import numpy.typing as npt
from av.audio.frame import AudioFrame
from av.audio.layout import AudioLayout
from av.audio.resampler import AudioResampler
from av.audio.stream import AudioStream
from av.container import InputContainer

from stream_server.core.audio import downmix
from stream_server.errors import DecodeError

__all__ = [
    "DecodeStats",
    "IoOpen",
    "Readable",
    "SourceInfo",
    "codec_round_trip",
    "decode_mono",
    "iter_pcm",
    "probe",
]

FloatArray = npt.NDArray[np.float32]

OPEN_OPTIONS: Final[dict[str, str]] = {"probesize": "32768", "analyzeduration": "500000"}
"""Demuxer options: probe at most 32768 bytes and 500000 microseconds (0.5 s) of input."""

_AV_TIME_BASE: Final = 1_000_000  # container.duration is in microseconds


@dataclass(frozen=True)
class SourceInfo:
    """Parameters of a source's first audio stream.

    Attributes:
        sample_rate: samples per second per channel (Hz).
        channels: number of channels.
        duration_s: length in seconds, or ``None`` when unknown (e.g. a live stream).
        codec: FFmpeg codec name, e.g. ``"opus"``, ``"mp3"``, ``"pcm_s16le"``.
        container: FFmpeg demuxer name, e.g. ``"ogg"``, ``"wav"``, ``"mp3"``.
    """

    sample_rate: int
    channels: int
    duration_s: float | None
    codec: str
    container: str


@dataclass
class DecodeStats:
    """Counters filled in by :func:`iter_pcm` while it runs.

    Attributes:
        packets: demuxed packets of the audio stream that carried data.
        corrupt_packets: packets the decoder rejected; they were skipped.
    """

    packets: int = 0
    corrupt_packets: int = 0


class Readable(Protocol):
    """A byte source PyAV can demux from instead of a path or URL (e.g. an HTTP response body)."""

    def read(self, size: int) -> bytes: ...


#: ``(url, flags, options) -> file``: how FFmpeg opens every further file or URL a demuxer needs
#: (HLS playlists and segments), instead of its own protocols (PyAV's ``io_open``).
IoOpen = Callable[[str, int, Mapping[str, str]], Readable]


def _open(
    source: str | Readable,
    open_timeout_s: float,
    *,
    format: str | None = None,
    options: Mapping[str, str] | None = None,
    read_timeout_s: float | None = None,
    io_open: IoOpen | None = None,
) -> InputContainer:
    merged = {**OPEN_OPTIONS, **(options or {})}
    timeout = open_timeout_s if read_timeout_s is None else (open_timeout_s, read_timeout_s)
    extra: dict[str, Any] = {} if io_open is None else {"io_open": io_open}
    try:
        container: InputContainer = av.open(
            source, mode="r", format=format, options=merged, timeout=timeout, **extra
        )
        return container
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise DecodeError(f"cannot open audio source {_name(source)!r}: {_words(exc)}") from exc


def _words(exc: BaseException) -> str:
    """An FFmpeg or OS error's own words, without its number (``No such file or
    directory``, not ``[Errno 2] No such file or directory: 'x'``)."""
    words = getattr(exc, "strerror", None)
    return str(words) if words else str(exc)


def _name(source: str | Readable) -> str:
    return source if isinstance(source, str) else str(getattr(source, "name", repr(source)))


def _audio_stream(container: InputContainer, source: str) -> AudioStream:
    """The first audio stream, which FFmpeg can decode; else :class:`DecodeError`."""
    if not container.streams.audio:
        raise DecodeError(f"audio source {source!r} has no audio stream")
    stream = container.streams.audio[0]
    if stream.codec_context is None:  # e.g. a WAV whose format tag names no known codec
        raise DecodeError(f"audio source {source!r} uses a codec FFmpeg cannot decode")
    return stream


def _duration_s(container: InputContainer, stream: AudioStream) -> float | None:
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and container.duration > 0:
        return container.duration / _AV_TIME_BASE
    return None


def probe(source: str, *, open_timeout_s: float = 10.0) -> SourceInfo:
    """Open ``source`` and describe its first audio stream (nothing is decoded).

    Raises:
        DecodeError: if the source cannot be opened or has no audio stream.
    """
    container = _open(source, open_timeout_s)
    try:
        stream = _audio_stream(container, source)
        ctx = stream.codec_context
        if ctx.sample_rate <= 0 or ctx.channels <= 0:
            raise DecodeError(
                f"audio source {source!r}: could not determine the sample rate or channel count"
            )
        return SourceInfo(
            sample_rate=int(ctx.sample_rate),
            channels=int(ctx.channels),
            duration_s=_duration_s(container, stream),
            codec=str(ctx.codec.canonical_name),
            container=str(container.format.name),
        )
    finally:
        container.close()


def _layout_name(channels: int) -> str:
    # FFmpeg's default layout for N channels: "1c" -> mono, "2c" -> stereo, "6c" -> 5.1, ...
    return f"{channels}c"


class _Converter:
    """``av.AudioResampler`` to packed float32 that survives mid-stream format changes."""

    def __init__(self, rate: int | None, layout: str | None) -> None:
        self._rate = rate
        self._layout: str | AudioLayout | None = layout
        self._resampler: AudioResampler | None = None
        self._input_key: tuple[str, str, int] | None = None

    @property
    def rate(self) -> int | None:
        """Output rate in Hz (``None`` until the first frame when keeping the source's rate)."""
        return self._rate

    def _new_resampler(self, frame: AudioFrame) -> AudioResampler:
        # Fix the output parameters on the first frame so a later input change keeps them.
        if self._rate is None:
            self._rate = int(frame.sample_rate)
        if self._layout is None:
            self._layout = AudioLayout(frame.layout)
        return AudioResampler(format="flt", layout=self._layout, rate=self._rate)

    @staticmethod
    def _to_array(frames: list[AudioFrame]) -> list[FloatArray]:
        out: list[FloatArray] = []
        for f in frames:
            if f is None or f.samples == 0:  # a pass-through resampler returns [None] at flush
                continue
            arr = f.to_ndarray().astype(np.float32, copy=False)
            out.append(arr.reshape(f.samples, f.layout.nb_channels))
        return out

    def push(self, frame: AudioFrame) -> list[FloatArray]:
        key = (frame.format.name, frame.layout.name, int(frame.sample_rate))
        out: list[FloatArray] = []
        if self._resampler is None or key != self._input_key:
            if self._resampler is not None:
                out.extend(self.flush())
            self._resampler = self._new_resampler(frame)
            self._input_key = key
        out.extend(self._to_array(self._resampler.resample(frame)))
        return out

    def flush(self) -> list[FloatArray]:
        if self._resampler is None:
            return []
        out = self._to_array(self._resampler.resample(None))
        self._resampler = None
        self._input_key = None
        return out


class _Chunker:
    """Re-cuts ``(frames, channels)`` blocks into blocks of ``round(chunk_seconds * rate)``."""

    def __init__(self, chunk_seconds: float) -> None:
        self._seconds = chunk_seconds
        self._size: int | None = None
        self._pending: list[FloatArray] = []
        self._count = 0

    def push(self, blocks: list[FloatArray], rate: int) -> list[FloatArray]:
        """Add ``blocks`` (at ``rate`` Hz); return every complete chunk now available."""
        if self._size is None:
            self._size = max(1, round(self._seconds * rate))
        for block in blocks:
            if block.shape[0]:
                self._pending.append(block)
                self._count += block.shape[0]
        if self._count < self._size:
            return []
        joined = self._join()
        full = self._count - self._count % self._size
        out = [joined[i : i + self._size] for i in range(0, full, self._size)]
        rest = joined[full:]
        self._pending = [rest] if rest.shape[0] else []
        self._count = rest.shape[0]
        return out

    def rest(self) -> FloatArray | None:
        """The last, shorter chunk, or ``None`` if nothing is pending."""
        if not self._count:
            return None
        joined = self._join()
        self._pending, self._count = [], 0
        return joined

    def _join(self) -> FloatArray:
        if len(self._pending) == 1:
            return self._pending[0]
        return np.concatenate(self._pending)


def iter_pcm(
    source: str | Readable,
    *,
    sample_rate: int | None = None,
    channels: int | None = None,
    chunk_seconds: float = 0.1,
    open_timeout_s: float = 10.0,
    stats: DecodeStats | None = None,
    format: str | None = None,
    options: Mapping[str, str] | None = None,
    read_timeout_s: float | None = None,
    on_open: Callable[[InputContainer], None] | None = None,
    io_open: IoOpen | None = None,
) -> Generator[FloatArray, None, None]:
    """Decode the first audio stream of ``source`` into float32 blocks.

    The source is opened on the first ``next()`` and closed when the generator finishes or is
    closed (``close()``, or garbage collection after the caller stops iterating).

    Args:
        source: file path, URL, or an object with ``read(size) -> bytes`` (e.g. an HTTP body).
        sample_rate: output rate in Hz, or ``None`` to keep the source's rate.
        channels: output channel count, or ``None`` to keep the source's channel layout.
            ``1`` averages the source channels (as :func:`stream_server.core.audio.downmix`); other
            counts use FFmpeg's rematrixing to its default layout for that count (``2``: stereo).
        chunk_seconds: block length in seconds; every block has exactly
            ``max(1, round(chunk_seconds * rate))`` frames except the last, which may be shorter.
        open_timeout_s: seconds to wait when opening and on each network read.
        stats: if given, its counters are updated while decoding.
        format: FFmpeg demuxer name to use instead of probing (e.g. ``"mp3"``, ``"hls"``).
        options: FFmpeg options added to (or overriding) :data:`OPEN_OPTIONS`, e.g.
            ``{"icy": "1", "timeout": "5000000"}`` (that timeout is in microseconds).
        read_timeout_s: seconds to wait on each read once open (default: ``open_timeout_s``).
        on_open: called with the open container before the first packet is read (to look at
            its metadata or duration).
        io_open: opens every file or URL FFmpeg needs, ``source`` included when it is a URL
            (PyAV's ``io_open``); an exception it raises ends the decoding with that exception.

    Yields:
        float32 arrays of shape ``(frames, channels)``, samples nominally in ``[-1, 1]``.

    Raises:
        DecodeError: if the source cannot be opened, has no audio stream, fails at the container
            level while reading, or yields no audio although its packets were all rejected.
            Packets the decoder rejects are otherwise skipped and counted in ``stats``.
    """
    if sample_rate is not None and sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive number of Hz, got {sample_rate!r}")
    if channels is not None and channels <= 0:
        raise ValueError(f"channels must be positive, got {channels!r}")
    if chunk_seconds <= 0:
        raise ValueError(f"chunk_seconds must be positive, got {chunk_seconds!r}")
    counters = stats if stats is not None else DecodeStats()

    container = _open(
        source,
        open_timeout_s,
        format=format,
        options=options,
        read_timeout_s=read_timeout_s,
        io_open=io_open,
    )
    name = _name(source)
    try:
        stream = _audio_stream(container, name)
        if on_open is not None:
            on_open(container)
        # Mono is the mean of the source channels, computed here rather than by FFmpeg (whose
        # stereo -> mono matrix sums the channels at -3 dB each).
        to_mono = channels == 1
        layout = None if channels is None or to_mono else _layout_name(channels)
        converter = _Converter(sample_rate, layout)
        chunker = _Chunker(chunk_seconds)
        produced = 0

        def blocks_of(frames: list[FloatArray]) -> list[FloatArray]:
            if to_mono:
                frames = [f if f.shape[1] == 1 else downmix(f)[:, None] for f in frames]
            rate = converter.rate
            return chunker.push(frames, rate) if rate is not None else []

        try:
            for packet in container.demux(stream):
                if packet.size:
                    counters.packets += 1
                try:
                    frames = packet.decode()
                except av.FFmpegError:
                    counters.corrupt_packets += 1
                    continue
                for frame in frames:
                    for block in blocks_of(converter.push(frame)):
                        produced += block.shape[0]
                        yield block
            tail = blocks_of(converter.flush())
        except av.FFmpegError as exc:
            raise DecodeError(
                f"reading audio source {name!r} failed after {counters.packets} packets: {exc}"
            ) from exc
        last = chunker.rest()
        if last is not None:
            tail.append(last)
        for block in tail:
            produced += block.shape[0]
            yield block
        if produced == 0 and counters.corrupt_packets > 0:
            raise DecodeError(
                f"no audio could be decoded from {name!r}: "
                f"all {counters.corrupt_packets} packets were rejected"
            )
    finally:
        container.close()


def decode_mono(source: str, sample_rate: int, *, open_timeout_s: float = 10.0) -> FloatArray:
    """Decode a whole source to mono float32 at ``sample_rate`` Hz.

    Channels are averaged (:func:`stream_server.core.audio.downmix`). Returns an array of shape
    ``(n,)`` where ``n`` is about ``duration_s * sample_rate`` samples.

    Raises:
        DecodeError: as :func:`iter_pcm`.
    """
    blocks = [
        downmix(block)
        for block in iter_pcm(
            source, sample_rate=sample_rate, chunk_seconds=10.0, open_timeout_s=open_timeout_s
        )
    ]
    if not blocks:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(blocks)


#: Container for each codec :func:`codec_round_trip` takes.
_CODEC_CONTAINERS: Final = {"mp3": "mp3", "aac": "adts"}


def codec_round_trip(audio: FloatArray, sample_rate: int, codec: str, bitrate: int) -> FloatArray:
    """``(n,)`` mono float32 at ``sample_rate`` Hz through ``codec`` (``mp3`` or ``aac``) at
    ``bitrate`` bit/s and back: ``(n,)`` float32 aligned with the input (the encoder's delay,
    found by cross-correlation, is removed) and trimmed or zero-padded to its length."""
    if codec not in _CODEC_CONTAINERS:
        raise ValueError(f"codec must be one of {sorted(_CODEC_CONTAINERS)}, got {codec!r}")
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=_CODEC_CONTAINERS[codec]) as out:
        stream = out.add_stream(codec, rate=sample_rate, layout="mono")
        assert isinstance(stream, AudioStream)
        stream.bit_rate = bitrate
        pts = 0
        for start in range(0, audio.size, 4096):
            block = np.ascontiguousarray(audio[start : start + 4096], dtype=np.float32)
            frame = AudioFrame.from_ndarray(block.reshape(1, -1), format="flt", layout="mono")
            frame.sample_rate = sample_rate
            frame.pts = pts
            pts += block.size
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    buffer.seek(0)
    decoded = np.concatenate(
        [downmix(b) for b in iter_pcm(buffer, sample_rate=sample_rate, chunk_seconds=10.0)]
    )
    decoded = decoded[_delay(audio, decoded) :]
    result = np.zeros_like(audio, dtype=np.float32)
    result[: min(audio.size, decoded.size)] = decoded[: audio.size]
    return result


def _delay(original: FloatArray, delayed: FloatArray, max_lag: int = 4096) -> int:
    """Samples by which ``delayed`` lags ``original`` (0 to ``max_lag``), by cross-correlation
    of their first 2**16 samples."""
    n = min(original.size, delayed.size, 1 << 16)
    if n <= max_lag:
        return 0
    size = 1 << (2 * n - 1).bit_length()
    corr = np.fft.irfft(np.fft.rfft(delayed[:n], size) * np.conj(np.fft.rfft(original[:n], size)))
    return int(np.argmax(corr[: max_lag + 1]))
