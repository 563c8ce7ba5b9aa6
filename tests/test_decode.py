"""Tests for stream_server.media.decode: probing and packet-by-packet decoding with PyAV."""

from __future__ import annotations

import re
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt
import pytest

from stream_server.errors import DecodeError
from stream_server.media.decode import (
    DecodeStats,
    SourceInfo,
    _Converter,
    codec_round_trip,
    decode_mono,
    iter_pcm,
    probe,
)
from tests.helpers.audio import encode_audio

SECONDS = 3.0
DATASET = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "genres"


def tone(freq_hz: float, rate: int, seconds: float, amp: float = 0.5) -> npt.NDArray[np.float32]:
    """A sine of ``freq_hz`` sampled at ``rate`` Hz, ``(round(seconds * rate),)`` float32."""
    t = np.arange(round(seconds * rate), dtype=np.float64) / rate
    return (amp * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def write_audio(
    path: Path,
    codec: str,
    rate: int,
    channels: int,
    *,
    freq_hz: float = 440.0,
    seconds: float = SECONDS,
    container_format: str | None = None,
) -> Path:
    """Encode a sine (the same on every channel) to ``path`` with PyAV."""
    data = np.repeat(tone(freq_hz, rate, seconds)[:, None], channels, axis=1)
    return encode_audio(path, data, rate, codec=codec, container_format=container_format)


def peak_hz(x: npt.NDArray[np.float32], rate: int) -> float:
    """Frequency in Hz of the strongest FFT bin of ``x`` (Hann window)."""
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spec)) * rate / len(x)


def needs_encoder(name: str) -> None:
    if name not in av.codecs_available:
        pytest.skip(f"PyAV's FFmpeg has no {name} encoder")


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="module")
def wav_stereo(media_dir: Path) -> Path:
    return write_audio(media_dir / "stereo.wav", "pcm_s16le", 44100, 2)


@pytest.fixture(scope="module")
def mp3_stereo(media_dir: Path) -> Path:
    needs_encoder("libmp3lame")
    return write_audio(media_dir / "stereo.mp3", "libmp3lame", 44100, 2, freq_hz=1000.0)


@pytest.fixture(scope="module")
def opus_mono(media_dir: Path) -> Path:
    needs_encoder("libopus")
    return write_audio(
        media_dir / "mono.opus", "libopus", 48000, 1, freq_hz=3000.0, container_format="ogg"
    )


def first_dataset_file() -> Path:
    if not DATASET.is_dir():
        pytest.skip(f"dataset directory {DATASET} is absent")
    files = sorted(DATASET.glob("*/*.opus"))
    if not files:
        pytest.skip(f"no .opus files under {DATASET}")
    return files[0]


# --------------------------------------------------------------------------- probe


def test_probe_wav(wav_stereo: Path) -> None:
    info = probe(str(wav_stereo))
    assert info == SourceInfo(
        sample_rate=44100, channels=2, duration_s=SECONDS, codec="pcm_s16le", container="wav"
    )


def test_probe_mp3(mp3_stereo: Path) -> None:
    info = probe(str(mp3_stereo))
    assert (info.sample_rate, info.channels, info.codec, info.container) == (
        44100,
        2,
        "mp3",
        "mp3",
    )
    assert info.duration_s == pytest.approx(SECONDS, abs=0.1)


def test_probe_opus(opus_mono: Path) -> None:
    info = probe(str(opus_mono))
    assert (info.sample_rate, info.channels, info.codec, info.container) == (
        48000,
        1,
        "opus",
        "ogg",
    )
    assert info.duration_s == pytest.approx(SECONDS, abs=0.05)


def test_probe_file_url(wav_stereo: Path) -> None:
    assert probe(f"file:{wav_stereo}").sample_rate == 44100


# --------------------------------------------------------------------------- iter_pcm


def test_iter_pcm_keeps_source_format(wav_stereo: Path) -> None:
    stats = DecodeStats()
    blocks = list(iter_pcm(str(wav_stereo), stats=stats))
    assert all(b.dtype == np.float32 and b.ndim == 2 and b.shape[1] == 2 for b in blocks)
    assert all(b.shape[0] == 4410 for b in blocks)  # 0.1 s at 44100 Hz
    audio = np.concatenate(blocks)
    assert audio.shape == (round(SECONDS * 44100), 2)
    expected = tone(440.0, 44100, SECONDS)
    np.testing.assert_allclose(audio[:, 0], expected, atol=1e-4)
    np.testing.assert_array_equal(audio[:, 0], audio[:, 1])
    assert stats.packets > 0
    assert stats.corrupt_packets == 0


def test_iter_pcm_chunk_sizes(wav_stereo: Path) -> None:
    blocks = list(iter_pcm(str(wav_stereo), chunk_seconds=0.07))
    sizes = [b.shape[0] for b in blocks]
    assert set(sizes[:-1]) == {3087}  # round(0.07 * 44100)
    assert 0 < sizes[-1] <= 3087
    assert sum(sizes) == round(SECONDS * 44100)


def test_iter_pcm_resample_and_mono(wav_stereo: Path) -> None:
    blocks = list(iter_pcm(str(wav_stereo), sample_rate=22050, channels=1, chunk_seconds=0.5))
    assert all(b.shape[1] == 1 for b in blocks)
    assert all(b.shape[0] == 11025 for b in blocks[:-1])
    audio = np.concatenate(blocks)[:, 0]
    assert abs(len(audio) - round(SECONDS * 22050)) <= 32
    # Mono is the mean of the (identical) channels, so the level is unchanged.
    interior = audio[1000:-1000]
    assert np.max(np.abs(interior)) == pytest.approx(0.5, abs=0.01)
    assert peak_hz(interior, 22050) == pytest.approx(440.0, abs=2.0)


def test_iter_pcm_upmix_to_stereo(opus_mono: Path) -> None:
    audio = np.concatenate(list(iter_pcm(str(opus_mono), channels=2)))
    assert audio.shape[1] == 2
    np.testing.assert_array_equal(audio[:, 0], audio[:, 1])


def test_iter_pcm_lengths_of_compressed_formats(mp3_stereo: Path, opus_mono: Path) -> None:
    mp3 = np.concatenate(list(iter_pcm(str(mp3_stereo))))
    assert mp3.shape[1] == 2
    assert abs(mp3.shape[0] - SECONDS * 44100) <= 2 * 1152  # encoder delay / padding
    opus = np.concatenate(list(iter_pcm(str(opus_mono))))
    assert opus.shape[1] == 1
    assert abs(opus.shape[0] - SECONDS * 48000) <= 960


def test_iter_pcm_stops_early_without_error(wav_stereo: Path) -> None:
    gen = iter_pcm(str(wav_stereo))
    first = next(gen)
    assert first.shape == (4410, 2)
    gen.close()


def test_iter_pcm_rejects_bad_arguments(wav_stereo: Path) -> None:
    with pytest.raises(ValueError, match="chunk_seconds"):
        next(iter_pcm(str(wav_stereo), chunk_seconds=0))
    with pytest.raises(ValueError, match="sample_rate"):
        next(iter_pcm(str(wav_stereo), sample_rate=0))
    with pytest.raises(ValueError, match="channels"):
        next(iter_pcm(str(wav_stereo), channels=0))


def test_converter_survives_input_format_change() -> None:
    conv = _Converter(22050, None)
    out = []
    for rate in (44100, 48000):
        mono = tone(440.0, rate, 0.5)
        for start in range(0, len(mono), 1024):
            block = np.ascontiguousarray(mono[None, start : start + 1024])
            frame = av.AudioFrame.from_ndarray(block, format="flt", layout="mono")
            frame.sample_rate = rate
            frame.pts = None
            out.extend(conv.push(frame))
    out.extend(conv.flush())
    audio = np.concatenate(out)
    assert audio.shape[1] == 1
    assert abs(len(audio) - 22050) <= 64


# --------------------------------------------------------------------------- decode_mono


def test_decode_mono_mp3_frequency(mp3_stereo: Path) -> None:
    audio = decode_mono(str(mp3_stereo), 22050)
    assert audio.dtype == np.float32
    assert audio.ndim == 1
    assert abs(len(audio) - SECONDS * 22050) <= 2 * 1152
    interior = audio[2000:-2000]
    assert peak_hz(interior, 22050) == pytest.approx(1000.0, abs=2.0)
    assert np.max(np.abs(interior)) == pytest.approx(0.5, abs=0.05)


def test_decode_mono_opus_frequency(opus_mono: Path) -> None:
    audio = decode_mono(str(opus_mono), 22050)
    assert abs(len(audio) - SECONDS * 22050) <= 480
    assert peak_hz(audio[2000:-2000], 22050) == pytest.approx(3000.0, abs=2.0)


def test_decode_mono_dataset_file() -> None:
    path = first_dataset_file()
    info = probe(str(path))
    assert (info.sample_rate, info.channels, info.codec) == (48000, 1, "opus")
    blocks = iter_pcm(str(path), sample_rate=22050, chunk_seconds=1.0)
    first = next(blocks)
    blocks.close()
    assert first.shape == (22050, 1)
    assert np.all(np.isfinite(first))
    assert float(np.sqrt(np.mean(first**2))) > 1e-4


# --------------------------------------------------------------------------- errors


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.wav"
    with pytest.raises(DecodeError, match=re.escape(str(missing))):
        probe(str(missing))
    with pytest.raises(DecodeError, match=re.escape(str(missing))):
        list(iter_pcm(str(missing)))
    with pytest.raises(DecodeError, match=re.escape(str(missing))):
        decode_mono(str(missing), 22050)


def test_random_bytes(tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp3"
    junk.write_bytes(np.random.default_rng(0).bytes(20000))
    with pytest.raises(DecodeError, match=re.escape(str(junk))):
        probe(str(junk))
    with pytest.raises(DecodeError, match=re.escape(str(junk))):
        decode_mono(str(junk), 22050)


def test_empty_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(DecodeError, match=re.escape(str(empty))):
        probe(str(empty))
    with pytest.raises(DecodeError, match=re.escape(str(empty))):
        list(iter_pcm(str(empty)))


def test_no_audio_stream(tmp_path: Path) -> None:
    subs = tmp_path / "subs.srt"
    subs.write_text("1\n00:00:00,000 --> 00:00:01,000\nhello\n\n", encoding="utf-8")
    with pytest.raises(DecodeError, match="no audio stream"):
        probe(str(subs))
    with pytest.raises(DecodeError, match=re.escape(str(subs))):
        decode_mono(str(subs), 22050)


def test_corrupt_packets_are_skipped(mp3_stereo: Path, tmp_path: Path) -> None:
    data = bytearray(mp3_stereo.read_bytes())
    rng = np.random.default_rng(1)
    n = len(data)
    for offset in range(n // 3, 2 * n // 3, 997):
        data[offset : offset + 40] = rng.bytes(40)
    damaged = tmp_path / "damaged.mp3"
    damaged.write_bytes(bytes(data))

    clean = np.concatenate(list(iter_pcm(str(mp3_stereo))))
    stats = DecodeStats()
    audio = np.concatenate(list(iter_pcm(str(damaged), stats=stats)))
    assert audio.shape[1] == 2
    assert audio.shape[0] >= 0.8 * clean.shape[0]
    assert stats.packets > 0.8 * (SECONDS * 44100 / 1152)
    assert stats.corrupt_packets > 0
    assert np.all(np.isfinite(audio))
    # The undamaged first third decodes exactly as before.
    head = clean.shape[0] // 4
    np.testing.assert_array_equal(audio[:head], clean[:head])


@pytest.mark.parametrize(("codec", "bitrate"), [("mp3", 32000), ("aac", 32000), ("mp3", 64000)])
def test_codec_round_trip_is_aligned_same_length_and_lossy(codec: str, bitrate: int) -> None:
    rate = 22050
    t = np.arange(rate * 3) / rate
    audio = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 3000 * t)).astype(
        np.float32
    )
    out = codec_round_trip(audio, rate, codec, bitrate)
    assert out.shape == audio.shape and out.dtype == np.float32
    middle = slice(rate // 2, -rate // 2)
    err = out[middle] - audio[middle]
    snr = 10 * np.log10(np.sum(audio[middle] ** 2) / np.sum(err**2))
    assert 10 < snr < 80  # close to the input (aligned), but not a copy


def test_codec_round_trip_refuses_other_codecs() -> None:
    with pytest.raises(ValueError, match="codec must be one of"):
        codec_round_trip(np.zeros(100, dtype=np.float32), 22050, "flac", 0)
