"""Tests for stream_server.core.audio: PCM parsing, downmix, format checks and the resampler."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest
import torch
import torchaudio.functional as taf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_server.core.audio import (
    SAMPLE_FORMATS,
    PcmDecoder,
    StreamingResampler,
    bytes_per_sample,
    downmix,
    pcm_to_float,
    resample_once,
    validate_format,
)
from stream_server.errors import AudioFormatError, ProtocolError

RATE_PAIRS = [
    (48000, 22050),
    (44100, 22050),
    (16000, 22050),
    (22050, 22050),
    (22050, 16000),
    (8000, 22050),
    (44100, 48000),
]


def sine(freq_hz: float, rate: int, n: int, amp: float = 0.5) -> npt.NDArray[np.float32]:
    """``n`` samples of a sine at ``freq_hz`` sampled at ``rate`` Hz."""
    t = np.arange(n, dtype=np.float64) / rate
    return (amp * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def mixture(rate: int, seconds: float = 0.25) -> npt.NDArray[np.float32]:
    """440 Hz + 3 kHz mixture, ``seconds`` long."""
    n = round(rate * seconds)
    return sine(440.0, rate, n, 0.4) + sine(3000.0, rate, n, 0.3)


def run_chunked(
    resampler: StreamingResampler, x: npt.NDArray[np.float32], sizes: list[int]
) -> npt.NDArray[np.float32]:
    """Feed ``x`` cut into chunks of ``sizes`` (cycled), then flush; return all output."""
    out = []
    i = 0
    k = 0
    while i < len(x):
        size = sizes[k % len(sizes)] if sizes else len(x)
        out.append(resampler.process(x[i : i + size]))
        i += size
        k += 1
    out.append(resampler.flush())
    return np.concatenate(out)


def peak_hz(x: npt.NDArray[np.float32], rate: int) -> tuple[float, float]:
    """(frequency in Hz, amplitude) of the strongest FFT bin of ``x`` under a Hann window."""
    w = np.hanning(len(x))
    spec = np.abs(np.fft.rfft(x * w))
    k = int(np.argmax(spec))
    return k * rate / len(x), float(spec[k] * 2 / w.sum())


# --------------------------------------------------------------------------- PCM parsing


def test_bytes_per_sample() -> None:
    assert bytes_per_sample("s16le") == 2
    assert bytes_per_sample("f32le") == 4
    assert set(SAMPLE_FORMATS) == {"s16le", "f32le"}


def test_s16_scaling_and_shape() -> None:
    ints = np.array([0, 1, -1, 32767, -32768, 16384], dtype="<i2")
    out = pcm_to_float(ints.tobytes(), "s16le", 2)
    assert out.dtype == np.float32
    assert out.shape == (3, 2)
    expected = ints.astype(np.float64).reshape(3, 2) / 32768.0
    np.testing.assert_array_equal(out, expected.astype(np.float32))
    assert out.min() == -1.0
    assert out.max() < 1.0


def test_f32_parsing_replaces_non_finite_and_clips_to_full_scale() -> None:
    vals = np.array([0.25, -0.5, np.nan, np.inf, -np.inf, 1.5, -3e38, 1.0], dtype="<f4")
    out = pcm_to_float(vals.tobytes(), "f32le", 4)
    assert out.shape == (2, 4)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[0.25, -0.5, 0.0, 0.0], [0.0, 1.0, -1.0, 1.0]])


def test_pcm_to_float_rejects_partial_frame() -> None:
    with pytest.raises(ValueError, match="whole number"):
        pcm_to_float(b"\x00\x00\x00", "s16le", 1)
    with pytest.raises(ValueError, match="whole number"):
        pcm_to_float(b"\x00" * 6, "f32le", 2)
    assert pcm_to_float(b"", "f32le", 2).shape == (0, 2)


def test_downmix_mean() -> None:
    frames = np.array([[1.0, 0.0], [0.5, -0.5], [-1.0, -1.0]], dtype=np.float32)
    out = downmix(frames)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0.5, 0.0, -1.0])
    mono = downmix(np.array([[0.1], [0.2]], dtype=np.float32))
    np.testing.assert_allclose(mono, [0.1, 0.2], rtol=1e-6)
    assert downmix(np.zeros((0, 4), dtype=np.float32)).shape == (0,)


def test_pcm_decoder_keeps_partial_frames() -> None:
    rng = np.random.default_rng(1)
    stereo = rng.integers(-32768, 32767, size=(1000, 2), dtype=np.int16)
    data = stereo.astype("<i2").tobytes()
    expected = downmix(pcm_to_float(data, "s16le", 2))

    dec = PcmDecoder("s16le", 2)
    outs = []
    pos = 0
    for size in [1, 2, 3, 0, 5, 7, 11, 4, 1, 997, 13]:
        outs.append(dec.decode(data[pos : pos + size]))
        pos += size
        assert dec.pending_bytes == pos % 4
    outs.append(dec.decode(data[pos:]))
    assert dec.pending_bytes == 0
    got = np.concatenate(outs)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)


def test_pcm_decoder_f32_mono_half_sample() -> None:
    dec = PcmDecoder("f32le", 1)
    data = np.array([0.5, -0.25], dtype="<f4").tobytes()
    assert dec.decode(data[:3]).shape == (0,)
    assert dec.pending_bytes == 3
    np.testing.assert_array_equal(dec.decode(data[3:]), [0.5, -0.25])
    assert dec.pending_bytes == 0


# --------------------------------------------------------------------------- validate_format


def test_validate_format_accepts_common_formats() -> None:
    for rate in (8000, 16000, 22050, 44100, 48000, 96000, 384000):
        for channels in (1, 2, 8):
            for fmt in SAMPLE_FORMATS:
                validate_format(rate, channels, fmt)


@pytest.mark.parametrize(
    ("rate", "channels", "fmt", "needle"),
    [
        (48000, 2, "s24le", "'s24le'"),
        (48000, 2, "", "sample format"),
        (0, 2, "s16le", "0 Hz"),
        (-44100, 2, "s16le", "-44100"),
        (10_000_000, 2, "s16le", "10000000"),
        (7999, 1, "f32le", "[8000, 384000]"),
        (48000, 0, "s16le", "channel count 0"),
        (48000, 64, "f32le", "channel count 64"),
        (48000, -1, "f32le", "[1, 8]"),
    ],
)
def test_validate_format_errors(rate: int, channels: int, fmt: str, needle: str) -> None:
    with pytest.raises(AudioFormatError) as info:
        validate_format(rate, channels, fmt)
    assert needle in str(info.value)
    assert isinstance(info.value, ProtocolError)
    assert info.value.code == "unsupported_format"


def test_validate_format_rejects_non_int_and_custom_limits() -> None:
    with pytest.raises(AudioFormatError, match="sample rate"):
        validate_format(44100.5, 2, "s16le")  # type: ignore[arg-type]
    with pytest.raises(AudioFormatError, match="sample rate"):
        validate_format(True, 2, "s16le")
    with pytest.raises(AudioFormatError, match=r"\[16000, 48000\]"):
        validate_format(8000, 1, "s16le", min_rate=16000, max_rate=48000)
    with pytest.raises(AudioFormatError, match=r"\[1, 2\]"):
        validate_format(48000, 3, "s16le", max_channels=2)


# --------------------------------------------------------------------------- resampler


@settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    pair=st.sampled_from(RATE_PAIRS),
    sizes=st.lists(
        st.one_of(st.integers(0, 2), st.integers(0, 64), st.integers(0, 5000)),
        min_size=1,
        max_size=40,
    ).filter(lambda s: any(s)),
)
def test_chunking_invariance(pair: tuple[int, int], sizes: list[int]) -> None:
    in_rate, out_rate = pair
    x = mixture(in_rate, 0.2)
    one_shot = resample_once(x, in_rate, out_rate)
    chunked = run_chunked(StreamingResampler(in_rate, out_rate), x, sizes)
    assert chunked.dtype == np.float32
    assert chunked.shape == one_shot.shape
    assert np.max(np.abs(chunked - one_shot)) < 1e-5


@pytest.mark.parametrize(("in_rate", "out_rate"), RATE_PAIRS)
def test_one_and_zero_sample_chunks(in_rate: int, out_rate: int) -> None:
    x = mixture(in_rate, 0.02)
    one_shot = resample_once(x, in_rate, out_rate)
    r = StreamingResampler(in_rate, out_rate)
    out = []
    for v in x:
        out.append(r.process(np.zeros(0, dtype=np.float32)))
        out.append(r.process(v[None]))
    out.append(r.flush())
    got = np.concatenate(out)
    assert got.shape == one_shot.shape
    assert np.max(np.abs(got - one_shot)) < 1e-5


@pytest.mark.parametrize(("in_rate", "out_rate"), RATE_PAIRS)
@pytest.mark.parametrize("n", [0, 1, 2, 319, 320, 321, 1000, 4801])
def test_output_length_rule(in_rate: int, out_rate: int, n: int) -> None:
    x = np.ones(n, dtype=np.float32)
    assert len(resample_once(x, in_rate, out_rate)) == math.ceil(n * out_rate / in_rate)


def test_flush_resets_state() -> None:
    x = mixture(48000, 0.05)
    r = StreamingResampler(48000, 22050)
    first = np.concatenate((r.process(x), r.flush()))
    assert r.samples_in == 0
    assert r.samples_out == 0
    second = np.concatenate((r.process(x), r.flush()))
    np.testing.assert_array_equal(first, second)
    assert r.flush().shape == (0,)


@pytest.mark.parametrize(("in_rate", "out_rate"), RATE_PAIRS)
def test_matches_torchaudio(in_rate: int, out_rate: int) -> None:
    x = mixture(in_rate, 0.3)
    ours = resample_once(x, in_rate, out_rate)
    ref = taf.resample(torch.from_numpy(x), in_rate, out_rate).numpy()
    assert ours.shape == ref.shape
    edge = 64
    assert np.max(np.abs(ours[edge:-edge] - ref[edge:-edge])) < 1e-3
    # Same zero padding at both ends, so the edges agree as well.
    assert np.max(np.abs(ours - ref)) < 1e-3


def test_kernel_bank_matches_torchaudio_parameters() -> None:
    r = StreamingResampler(48000, 22050)
    assert (r.up, r.down) == (147, 320)
    bank = r.kernel_bank
    assert bank.shape == (147, r.taps)
    assert bank.dtype == np.float32
    # Each phase interpolates a constant to (nearly) itself: DC gain close to 1.
    np.testing.assert_allclose(bank.sum(axis=1), 1.0, atol=2e-2)


def test_passthrough_copies() -> None:
    r = StreamingResampler(22050, 22050)
    x = mixture(22050, 0.01)
    y = r.process(x)
    np.testing.assert_array_equal(x, y)
    assert y is not x
    y[0] = 123.0
    assert x[0] != 123.0
    assert r.flush().shape == (0,)
    assert (r.in_rate, r.out_rate) == (22050, 22050)


def test_sine_keeps_amplitude_and_frequency() -> None:
    in_rate, out_rate = 48000, 22050
    x = sine(3000.0, in_rate, 2 * in_rate, amp=0.5)
    # One second away from the edges: 1 Hz FFT bins, so 3 kHz falls exactly on a bin.
    y = resample_once(x, in_rate, out_rate)[200 : 200 + out_rate]
    freq, amp = peak_hz(y, out_rate)
    assert freq == pytest.approx(3000.0, abs=1.0)
    assert amp == pytest.approx(0.5, rel=0.01)
    # Pointwise comparison against the ideal continuous-time sine.
    t = (np.arange(len(y)) + 200) / out_rate
    ideal = 0.5 * np.sin(2 * np.pi * 3000.0 * t)
    assert np.max(np.abs(y - ideal)) < 5e-3


def test_anti_aliasing_15khz_tone() -> None:
    in_rate, out_rate = 48000, 22050
    x = sine(15000.0, in_rate, in_rate, amp=0.5)
    y = resample_once(x, in_rate, out_rate)[200:-200]
    # Without a low-pass filter 15 kHz would fold to 22050 - 15000 = 7050 Hz at full level.
    rms = float(np.sqrt(np.mean(y.astype(np.float64) ** 2)))
    assert rms < 0.5 / math.sqrt(2) * 0.01  # more than 40 dB down


def test_upsampling_sine() -> None:
    x = sine(440.0, 16000, 32000, amp=0.8)
    y = resample_once(x, 16000, 22050)[100 : 100 + 22050]
    freq, amp = peak_hz(y, 22050)
    assert freq == pytest.approx(440.0, abs=1.0)
    assert amp == pytest.approx(0.8, rel=0.01)


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="in_rate"):
        StreamingResampler(0, 22050)
    with pytest.raises(ValueError, match="out_rate"):
        StreamingResampler(48000, -1)
    with pytest.raises(ValueError, match="rolloff"):
        StreamingResampler(48000, 22050, rolloff=0.0)
    with pytest.raises(ValueError, match="lowpass_filter_width"):
        StreamingResampler(48000, 22050, lowpass_filter_width=0)
    with pytest.raises(ValueError, match="1-D"):
        StreamingResampler(48000, 22050).process(np.zeros((4, 2), dtype=np.float32))


def test_custom_filter_width_matches_torchaudio() -> None:
    x = mixture(44100, 0.2)
    r = StreamingResampler(44100, 16000, lowpass_filter_width=12, rolloff=0.9)
    ours = run_chunked(r, x, [37, 1000, 0, 5])
    ref = taf.resample(
        torch.from_numpy(x), 44100, 16000, lowpass_filter_width=12, rolloff=0.9
    ).numpy()
    assert np.max(np.abs(ours - ref)) < 1e-3


def test_long_stream_indices_stay_bounded() -> None:
    r = StreamingResampler(48000, 22050)
    chunk = mixture(48000, 0.1)
    total = 0
    for _ in range(50):
        total += len(r.process(chunk))
        assert len(r._buf) < 2 * r.taps + r.down  # internal history stays small
    total += len(r.flush())
    assert total == math.ceil(50 * len(chunk) * 22050 / 48000)
