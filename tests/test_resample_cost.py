"""StreamingResampler at awkward rate pairs: accuracy of the tabulated kernel, chunking, cost.

For nearly coprime rates (8009 -> 22050: ``L = 22050`` phases) the resampler interpolates its
kernel rows from a fixed table instead of storing one exact row per phase. These tests check
that this stays within float32-level error of torchaudio's filter, that chunking still does not
change the output, and that the memory one ``process`` call needs is bounded whatever the rates
(measured with ``tracemalloc``, not with a clock).
"""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import numpy.typing as npt
import pytest
import torch
import torchaudio.functional as taf

from stream_server.core.audio import PcmDecoder, StreamingResampler, resample_once

Signal = npt.NDArray[np.float32]

LPW = 6  # StreamingResampler's default lowpass_filter_width
ROLLOFF = 0.99  # and rolloff

#: Rate pairs whose reduced up-factor L is above the exact-bank limit (4096 phases).
AWKWARD = [(8009, 22050), (44101, 16000), (8005, 22050), (384001, 22050), (8002, 16000)]

#: One 1 MiB message of s16le PCM: 524288 samples.
FRAME_BYTES = 1 << 20


def probe_signal(rate: int, out_rate: int, seconds: float, seed: int = 0) -> Signal:
    """Sines below both Nyquist frequencies plus a little white noise; ``|x| < 1``."""
    n = round(rate * seconds)
    t = np.arange(n, dtype=np.float64) / rate
    top = 0.45 * min(rate, out_rate)  # Hz, below the filter's cutoff
    x = (
        0.4 * np.sin(2 * np.pi * 440.0 * t)
        + 0.3 * np.sin(2 * np.pi * 3000.0 * t + 0.5)
        + 0.2 * np.sin(2 * np.pi * top * t + 1.0)
    )
    x += 0.05 * np.random.default_rng(seed).standard_normal(n)
    return x.astype(np.float32)


def reference(x: Signal, in_rate: int, out_rate: int) -> npt.NDArray[np.float64]:
    """torchaudio's ``sinc_interp_hann`` resampling evaluated directly, in float64.

    Output ``k`` is ``sum_i x[i] * h(i - k * M / L)`` with ``h(d) = s * sinc(pi * s * d) *
    cos(pi * s * d / (2 * LPW))**2`` for ``|s * d| <= LPW`` (argument clamped there),
    ``s = ROLLOFF * min(L, M) / M``; ``x`` is zero outside ``[0, n)``; ``ceil(n * L / M)``
    outputs. Costs ``(outputs, support)`` float64 values, independent of ``L``.
    """
    g = math.gcd(in_rate, out_rate)
    up, down = out_rate // g, in_rate // g
    s = ROLLOFF * min(up, down) / down
    half = math.ceil(LPW / s) + 1  # input samples on each side of the output instant
    k = np.arange(-(-len(x) * up // down), dtype=np.int64)
    centre = k * down // up
    frac = (k * down % up) / up
    i = centre[:, None] + np.arange(-half, half + 2)[None, :]
    d = (i - centre[:, None]) - frac[:, None]
    arg = np.clip(d * s, -LPW, LPW)
    h = s * np.sinc(arg) * np.cos(np.pi * arg / (2 * LPW)) ** 2
    padded = np.concatenate((np.zeros(half), x.astype(np.float64), np.zeros(half + 2)))
    out: npt.NDArray[np.float64] = np.sum(padded[i + half] * h, axis=1)
    return out


def run_chunked(resampler: StreamingResampler, x: Signal, sizes: list[int]) -> Signal:
    """Feed ``x`` cut into chunks of ``sizes`` (cycled), then flush; return all output."""
    out = []
    i = 0
    k = 0
    while i < len(x):
        size = sizes[k % len(sizes)]
        out.append(resampler.process(x[i : i + size]))
        i += size
        k += 1
    out.append(resampler.flush())
    return np.concatenate(out)


def frame_of(rate: int, channels: int) -> Signal:
    """One 1 MiB s16le message at ``rate`` Hz, decoded and downmixed as a session does."""
    n = FRAME_BYTES // 2
    t = np.arange(n, dtype=np.float64) / rate
    pcm = (12000 * np.sin(2 * np.pi * 440.0 * t)).astype("<i2")
    return PcmDecoder("s16le", channels).decode(pcm.tobytes())


def process_peak(resampler: StreamingResampler, x: Signal) -> tuple[int, Signal]:
    """Peak bytes traced by ``tracemalloc`` during one ``process(x)`` call, and its output."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        y = resampler.process(x)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, y


# --------------------------------------------------------------------------- accuracy


@pytest.mark.parametrize(("in_rate", "out_rate"), [(8005, 22050), (8002, 16000)])
def test_tabulated_kernel_matches_torchaudio(in_rate: int, out_rate: int) -> None:
    # Pairs with L > 4096 whose torchaudio kernel (L rows of M + 2 * width taps) is small enough
    # to build here; torchaudio in float64, as float32 costs it about 1e-4 at these rates.
    assert not StreamingResampler(in_rate, out_rate).exact
    x = probe_signal(in_rate, out_rate, 0.25)
    ref = taf.resample(torch.from_numpy(x.astype(np.float64)), in_rate, out_rate).numpy()
    # The direct evaluation used below for larger L is torchaudio's filter.
    direct = reference(x, in_rate, out_rate)
    assert direct.shape == ref.shape
    assert np.max(np.abs(direct - ref)) < 1e-9
    ours = resample_once(x, in_rate, out_rate)
    assert ours.dtype == np.float32
    assert ours.shape == ref.shape
    assert np.max(np.abs(ours - ref)) < 1e-5


@pytest.mark.parametrize(("in_rate", "out_rate"), AWKWARD)
def test_tabulated_kernel_matches_the_exact_filter(in_rate: int, out_rate: int) -> None:
    # 8009 -> 22050 (L = 22050) and 44101 -> 16000 (L = 16000): torchaudio's kernel would take
    # GBs, so the reference is its filter evaluated directly (checked against it above).
    r = StreamingResampler(in_rate, out_rate)
    assert r.up > 4096
    assert not r.exact
    x = probe_signal(in_rate, out_rate, 0.25)
    ours = resample_once(x, in_rate, out_rate)
    ref = reference(x, in_rate, out_rate)
    assert ours.shape == ref.shape == (math.ceil(len(x) * out_rate / in_rate),)
    assert np.max(np.abs(ours - ref)) < 1e-5


def test_common_rates_keep_the_exact_bank() -> None:
    for in_rate in (8000, 11025, 16000, 22050, 32000, 44100, 48000, 96000, 192000, 384000):
        for out_rate in (16000, 22050):
            r = StreamingResampler(in_rate, out_rate)
            assert r.exact, (in_rate, out_rate)


def test_interpolated_rows_stay_normalised() -> None:
    r = StreamingResampler(8009, 22050)
    rows = r.kernel_bank
    assert rows.shape == (22050, r.taps)
    assert rows.dtype == np.float32
    # Each phase interpolates a constant to (nearly) itself: DC gain close to 1.
    np.testing.assert_allclose(rows.sum(axis=1), 1.0, atol=2e-2)


# --------------------------------------------------------------------------- chunking


@pytest.mark.parametrize(("in_rate", "out_rate"), AWKWARD)
@pytest.mark.parametrize(
    "sizes",
    [[1], [0, 1, 2, 0, 3], [7, 4999, 0, 1, 13], [30011], [65536, 3, 100003]],
)
def test_chunking_invariance_at_awkward_rates(
    in_rate: int, out_rate: int, sizes: list[int]
) -> None:
    # 2 s: long enough that one-shot processing spans many internal blocks of outputs; tiny
    # chunks get 0.05 s, still several calls per block of M input samples.
    seconds = 2.0 if max(sizes) > 100 else 0.05
    x = probe_signal(in_rate, out_rate, seconds, seed=1)
    one_shot = resample_once(x, in_rate, out_rate)
    chunked = run_chunked(StreamingResampler(in_rate, out_rate), x, sizes)
    assert chunked.dtype == np.float32
    assert chunked.shape == one_shot.shape == (math.ceil(len(x) * out_rate / in_rate),)
    assert np.max(np.abs(chunked - one_shot)) < 1e-6


# --------------------------------------------------------------------------- cost


@pytest.mark.parametrize(
    ("in_rate", "channels", "out_rate"),
    [
        (8000, 1, 22050),
        (8009, 1, 22050),
        (384000, 8, 22050),
        (384000, 1, 22050),
        (44101, 1, 16000),
    ],
)
def test_one_mib_frame_needs_bounded_memory(in_rate: int, channels: int, out_rate: int) -> None:
    x = frame_of(in_rate, channels)
    r = StreamingResampler(in_rate, out_rate)
    r.process(x[:1000])  # a stream already running
    peak, y = process_peak(r, x)
    assert y.shape[0] == pytest.approx(len(x) * out_rate / in_rate, abs=r.taps + 2)
    assert peak < 64 * 2**20
    # Beyond the input history (a copy of x) and the output array: a few MB of temporaries.
    assert peak - x.nbytes - y.nbytes < 8 * 2**20


def test_memory_does_not_grow_with_the_number_of_phases() -> None:
    # About 8 kHz in, 22050 Hz out: the same input and output sizes, L from 441 to 22050.
    peaks = {}
    for in_rate in (8000, 8005, 8009):
        x = frame_of(in_rate, 1)
        r = StreamingResampler(in_rate, 22050)
        peak, _ = process_peak(r, x)
        peaks[r.up] = peak
    assert sorted(peaks) == [441, 4410, 22050]
    assert max(peaks.values()) - min(peaks.values()) < 2**20, peaks


@pytest.mark.parametrize(("in_rate", "out_rate"), [*AWKWARD, (8000, 22050), (384000, 22050)])
def test_construction_needs_bounded_memory(in_rate: int, out_rate: int) -> None:
    tracemalloc.start()
    try:
        r = StreamingResampler(in_rate, out_rate)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.taps > 0
    assert peak < 16 * 2**20
