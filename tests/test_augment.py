"""Tests for stream_server.training.augment: noise, SpecAugment masks, mixup and the Beta
quantile."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor

from stream_server.training.augment import add_noise, beta_quantile, colour, mixup, spec_mask
from tests.helpers.devices import DEVICES

RATE = 22050


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def sines(batch: int, samples: int = RATE) -> Tensor:
    """``(batch, samples)`` float32 sines of different frequencies and amplitudes."""
    t = torch.arange(samples, dtype=torch.float64) / RATE
    freqs = torch.linspace(110.0, 3000.0, batch, dtype=torch.float64).unsqueeze(1)
    amps = torch.linspace(0.05, 0.9, batch, dtype=torch.float64).unsqueeze(1)
    return (amps * torch.sin(2 * math.pi * freqs * t)).float()


def snr_db(clean: Tensor, noisy: Tensor) -> Tensor:
    noise = (noisy - clean).double()
    return 10 * torch.log10(clean.double().square().mean(1) / noise.square().mean(1))


# -- add_noise -----------------------------------------------------------------------------------


def test_noise_prob_zero_is_identity() -> None:
    wave = sines(8)
    out = add_noise(wave, gen(), prob=0.0, snr_db=(0.0, 10.0))
    assert torch.equal(out, wave)


@pytest.mark.parametrize(("lo", "hi"), [(5.0, 25.0), (30.0, 40.0)])
def test_noise_snr_within_the_drawn_range(lo: float, hi: float) -> None:
    wave = sines(16)
    before = wave.clone()
    out = add_noise(wave, gen(1), prob=1.0, snr_db=(lo, hi))
    assert torch.equal(wave, before)  # not in place
    assert out.shape == wave.shape
    assert out.dtype == torch.float32
    measured = snr_db(wave, out)
    assert bool((measured >= lo - 0.25).all()), measured
    assert bool((measured <= hi + 0.25).all()), measured
    # the SNRs are drawn, not all the same
    assert float(measured.max() - measured.min()) > (hi - lo) / 4


def test_noise_fixed_snr_is_met() -> None:
    wave = sines(12)
    out = add_noise(wave, gen(2), prob=1.0, snr_db=(12.0, 12.0))
    np.testing.assert_allclose(snr_db(wave, out).numpy(), 12.0, atol=0.2)
    # the noise is white: about as strong above 5 kHz as below, unlike the sines
    spec = torch.fft.rfft((out - wave).double(), dim=1).abs().square()
    low, high = spec[:, : spec.shape[1] // 2].mean(1), spec[:, spec.shape[1] // 2 :].mean(1)
    np.testing.assert_allclose((high / low).numpy(), 1.0, rtol=0.15)


def test_noise_prob_half_picks_some_windows() -> None:
    wave = sines(64, 2048)
    out = add_noise(wave, gen(3), prob=0.5, snr_db=(10.0, 20.0))
    same = torch.tensor([torch.equal(a, b) for a, b in zip(out, wave, strict=True)])
    assert 12 <= int(same.sum()) <= 52
    assert bool((snr_db(wave[~same], out[~same]) <= 20.5).all())


def test_noise_leaves_silence_silent() -> None:
    wave = torch.zeros(4, 4096)
    wave[2] = sines(1, 4096)[0]
    out = add_noise(wave, gen(4), prob=1.0, snr_db=(0.0, 5.0))
    assert bool((out[[0, 1, 3]] == 0).all())
    assert not torch.equal(out[2], wave[2])
    assert bool(torch.isfinite(out).all())


def test_noise_is_seeded() -> None:
    wave = sines(6, 4096)
    a = add_noise(wave, gen(5), prob=0.7, snr_db=(10.0, 30.0))
    b = add_noise(wave, gen(5), prob=0.7, snr_db=(10.0, 30.0))
    c = add_noise(wave, gen(6), prob=0.7, snr_db=(10.0, 30.0))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


# -- spec_mask -----------------------------------------------------------------------------------


def masked_rows_cols(images: Tensor, out: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per image: the masked cells (equal to the image mean), rows and columns."""
    fill = images.mean(dim=(1, 2, 3), keepdim=True)
    masked = (out == fill).expand_as(out)
    rows = masked.all(dim=3).all(dim=1)  # (batch, height)
    cols = masked.all(dim=2).all(dim=1)  # (batch, width)
    return masked, rows, cols


def runs(flags: Tensor) -> list[int]:
    """Lengths of the runs of True in a 1-D bool tensor."""
    out, n = [], 0
    for f in flags.tolist():
        if f:
            n += 1
        elif n:
            out.append(n)
            n = 0
    return [*out, n] if n else out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_spec_mask_masks_whole_rows_and_columns_with_the_mean(dtype: torch.dtype) -> None:
    images = torch.randn(64, 3, 16, 20, generator=gen(0), dtype=dtype)
    out = spec_mask(images, gen(1), freq_masks=2, max_freq=4, time_masks=2, max_time=5)
    assert out.shape == images.shape
    assert out.dtype == dtype
    masked, rows, cols = masked_rows_cols(images, out)
    # every changed cell holds the mean, and the changed cells are exactly whole rows/columns
    assert bool(masked[out != images].all())
    expected = (rows[:, None, :, None] | cols[:, None, None, :]).expand_as(masked)
    assert torch.equal(masked, expected)
    assert torch.equal(out[~masked], images[~masked])
    assert int(rows.sum(1).max()) <= 2 * 4
    assert int(cols.sum(1).max()) <= 2 * 5
    assert int(rows.any(1).sum()) > 32 and int(cols.any(1).sum()) > 32


def test_spec_mask_widths_never_exceed_the_maxima() -> None:
    images = torch.randn(128, 1, 12, 30, generator=gen(2))
    out = spec_mask(images, gen(3), freq_masks=1, max_freq=3, time_masks=1, max_time=7)
    _, rows, cols = masked_rows_cols(images, out)
    row_runs = [runs(r) for r in rows]
    col_runs = [runs(c) for c in cols]
    assert all(len(r) <= 1 for r in row_runs) and all(len(c) <= 1 for c in col_runs)
    widths_f = {w for r in row_runs for w in r}
    widths_t = {w for c in col_runs for w in c}
    assert widths_f == {1, 2, 3}  # every width up to the maximum is drawn, none wider
    assert widths_t == set(range(1, 8))
    # a width of 0 (no mask) is drawn too
    assert any(not r for r in row_runs) and any(not c for c in col_runs)


def test_spec_mask_wider_than_the_image() -> None:
    images = torch.randn(32, 1, 4, 6, generator=gen(4))
    out = spec_mask(images, gen(5), freq_masks=3, max_freq=50, time_masks=0, max_time=0)
    masked, rows, _ = masked_rows_cols(images, out)
    assert bool(rows.all(1).any())  # some image lost every row
    assert torch.equal(masked, rows[:, None, :, None].expand_as(masked))


@pytest.mark.parametrize(
    ("freq_masks", "max_freq", "time_masks", "max_time"),
    [(0, 4, 0, 5), (2, 0, 2, 0), (0, 4, 2, 0), (2, 0, 0, 5)],
)
def test_spec_mask_without_masks_is_unchanged(
    freq_masks: int, max_freq: int, time_masks: int, max_time: int
) -> None:
    images = torch.randn(4, 3, 8, 10, generator=gen(6))
    out = spec_mask(
        images,
        gen(7),
        freq_masks=freq_masks,
        max_freq=max_freq,
        time_masks=time_masks,
        max_time=max_time,
    )
    assert out.shape == images.shape
    assert torch.equal(out, images)


@pytest.mark.parametrize(("axis", "kwargs"), [(2, {"time_masks": 0}), (3, {"freq_masks": 0})])
def test_spec_mask_one_axis_only(axis: int, kwargs: dict[str, int]) -> None:
    images = torch.randn(32, 2, 10, 12, generator=gen(8))
    options = {"freq_masks": 2, "max_freq": 3, "time_masks": 2, "max_time": 3} | kwargs
    out = spec_mask(images, gen(9), **options)
    masked, rows, cols = masked_rows_cols(images, out)
    if axis == 2:
        assert not bool(cols.any()) and bool(rows.any())
        assert torch.equal(masked, rows[:, None, :, None].expand_as(masked))
    else:
        assert not bool(rows.any()) and bool(cols.any())
        assert torch.equal(masked, cols[:, None, None, :].expand_as(masked))


def test_spec_mask_is_seeded() -> None:
    images = torch.randn(8, 1, 16, 16, generator=gen(10))
    kw = {"freq_masks": 2, "max_freq": 4, "time_masks": 2, "max_time": 4}
    a = spec_mask(images, gen(11), **kw)
    assert torch.equal(a, spec_mask(images, gen(11), **kw))
    assert not torch.equal(a, spec_mask(images, gen(12), **kw))


# -- mixup ---------------------------------------------------------------------------------------


def recover(targets: Tensor) -> tuple[list[float], list[int]]:
    """From mixed one-hot (identity) targets: the weight of each row's own label and its partner."""
    lams, perm = [], []
    for i, row in enumerate(targets.tolist()):
        others = [j for j, v in enumerate(row) if j != i and v > 0]
        assert len(others) <= 1
        perm.append(others[0] if others else i)
        if others:
            lams.append(row[i])
    return lams, perm


def test_mixup_prob_zero_is_identity() -> None:
    images = torch.randn(6, 1, 4, 5)
    targets = torch.eye(6)
    out_x, out_y = mixup(images, targets, gen(), alpha=0.4, prob=0.0)
    assert out_x is images and out_y is targets
    out_x, out_y = mixup(images, targets, gen(), alpha=0.0, prob=1.0)
    assert out_x is images and out_y is targets


def test_mixup_is_one_convex_combination() -> None:
    n = 6
    images = torch.randn(n, 2, 4, 5, generator=gen(20))
    targets = torch.eye(n)
    mixed_rows = 0
    for seed in range(8):
        out_x, out_y = mixup(images, targets, gen(seed), alpha=0.4, prob=1.0)
        assert out_x.shape == images.shape and out_y.shape == targets.shape
        np.testing.assert_allclose(out_y.sum(1).numpy(), 1.0, atol=1e-6)
        lams, perm = recover(out_y)
        assert sorted(perm) == list(range(n))
        if not lams:
            continue
        mixed_rows += len(lams)
        lam = lams[0]
        assert 0.0 <= lam <= 1.0
        np.testing.assert_allclose(lams, lam, atol=1e-6)  # one lam for the whole batch
        index = torch.tensor(perm)
        expected_y = lam * targets + (1 - lam) * targets[index]
        expected_x = lam * images + (1 - lam) * images[index]
        torch.testing.assert_close(out_y, expected_y, atol=1e-6, rtol=0)
        torch.testing.assert_close(out_x, expected_x, atol=1e-5, rtol=0)
    assert mixed_rows > 0


def test_mixup_soft_targets_still_sum_to_one() -> None:
    targets = torch.softmax(torch.randn(16, 10, generator=gen(21)), dim=1)
    images = torch.randn(16, 1, 8, 8, generator=gen(22))
    for seed in range(5):
        _, out_y = mixup(images, targets, gen(seed), alpha=1.0, prob=1.0)
        np.testing.assert_allclose(out_y.sum(1).numpy(), 1.0, atol=1e-5)
        assert bool((out_y >= 0).all())


def test_mixup_is_seeded_and_follows_prob() -> None:
    images = torch.randn(8, 1, 4, 4, generator=gen(23))
    targets = torch.eye(8)
    a = mixup(images, targets, gen(30), alpha=0.4, prob=1.0)
    b = mixup(images, targets, gen(30), alpha=0.4, prob=1.0)
    c = mixup(images, targets, gen(31), alpha=0.4, prob=1.0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    mixed = sum(
        mixup(images, targets, gen(seed), alpha=0.4, prob=0.5)[0] is not images
        for seed in range(200)
    )
    assert 70 <= mixed <= 130


# -- beta_quantile -------------------------------------------------------------------------------

ALPHAS = [0.2, 0.4, 0.5, 1.0, 2.0, 5.0]
US = np.linspace(0.0, 1.0, 101)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_beta_quantile_monotone_symmetric_with_median_half(alpha: float) -> None:
    q = np.array([beta_quantile(alpha, float(u)) for u in US])
    assert bool((np.diff(q) >= 0).all())
    assert bool(((q > 0) & (q < 1)).all())
    mirrored = np.array([beta_quantile(alpha, 1.0 - float(u)) for u in US])
    np.testing.assert_allclose(mirrored, 1.0 - q, atol=1e-3)
    assert beta_quantile(alpha, 0.5) == pytest.approx(0.5, abs=1e-3)


def test_beta_quantile_alpha_one_is_uniform() -> None:
    q = np.array([beta_quantile(1.0, float(u)) for u in US])
    np.testing.assert_allclose(q, US, atol=1e-3)


def test_beta_quantile_matches_closed_forms() -> None:
    inner = US[1:-1]
    # Beta(1/2, 1/2) is the arcsine distribution: quantile sin^2(pi u / 2)
    q = np.array([beta_quantile(0.5, float(u)) for u in inner])
    np.testing.assert_allclose(q, np.sin(np.pi * inner / 2) ** 2, atol=5e-3)
    # Beta(2, 2) has the CDF 3x^2 - 2x^3
    q = np.array([beta_quantile(2.0, float(u)) for u in inner])
    np.testing.assert_allclose(3 * q**2 - 2 * q**3, inner, atol=2e-3)


def test_beta_quantile_small_alpha_is_u_shaped() -> None:
    # Beta(0.2, 0.2) puts most of its mass near 0 and 1
    assert beta_quantile(0.2, 0.25) < 0.05
    assert beta_quantile(0.2, 0.75) > 0.95
    assert 0.3 < beta_quantile(5.0, 0.25) < 0.5  # a large alpha concentrates around 1/2


# -- devices -------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_augmentations_keep_the_device(device: str) -> None:
    wave = sines(4, 4096).to(device)
    noisy = add_noise(wave, gen(40), prob=1.0, snr_db=(10.0, 10.0))
    assert noisy.device == wave.device
    np.testing.assert_allclose(snr_db(wave, noisy).cpu().numpy(), 10.0, atol=0.5)
    images = torch.randn(4, 1, 8, 8, generator=gen(41)).to(device)
    masked = spec_mask(images, gen(42), freq_masks=1, max_freq=2, time_masks=1, max_time=2)
    assert masked.device == images.device
    mixed, targets = mixup(images, torch.eye(4, device=device), gen(43), alpha=0.4, prob=1.0)
    assert mixed.device == images.device and targets.device == images.device
    # the same draws on every device
    torch.testing.assert_close(
        noisy.cpu(), add_noise(wave.cpu(), gen(40), prob=1.0, snr_db=(10.0, 10.0))
    )


# -- colour --------------------------------------------------------------------------------------

NO_COLOUR = {
    "lowpass_prob": 0.0,
    "lowpass_hz": (4000.0,),
    "tilt_prob": 0.0,
    "tilt_db_per_octave": 0.0,
    "reverb_prob": 0.0,
    "reverb_rt60_s": (0.2, 0.5),
}


def band_energy(wave: Tensor, lo: float, hi: float) -> Tensor:
    spectrum = torch.fft.rfft(wave.double()).abs().square()
    freqs = torch.fft.rfftfreq(wave.shape[1], 1 / RATE)
    band = (freqs >= lo) & (freqs < hi)
    return spectrum[:, band].sum(1) / spectrum.sum(1)


def test_colour_with_nothing_drawn_is_the_identity() -> None:
    wave = torch.randn(4, RATE, generator=gen(1))
    assert torch.allclose(colour(wave, gen(), RATE, **NO_COLOUR), wave, atol=1e-5)  # type: ignore[arg-type]


def test_colour_lowpass_removes_what_lies_above_the_rolloff() -> None:
    wave = torch.randn(4, RATE, generator=gen(1))
    kw = {**NO_COLOUR, "lowpass_prob": 1.0, "lowpass_hz": (4000.0,)}
    out = colour(wave, gen(), RATE, **kw)  # type: ignore[arg-type]
    assert float(band_energy(out, 4000 * 2**0.5 + 1, RATE / 2).max()) < 1e-9
    assert float(band_energy(out, 100, 3000).min()) > 0.3  # the band below stays
    # the level is kept: each window's RMS is its original one
    assert torch.allclose(out.square().mean(1), wave.square().mean(1), rtol=1e-4)


def test_colour_tilt_and_reverb_change_the_sound_within_bounds() -> None:
    wave = sines(6)
    kw = {**NO_COLOUR, "tilt_prob": 1.0, "tilt_db_per_octave": 6.0}
    tilted = colour(wave, gen(2), RATE, **kw)  # type: ignore[arg-type]
    # a pure tone keeps its frequency under a tilt (only its level changes, and that is restored)
    assert torch.allclose(tilted, wave, atol=1e-3)
    kw = {**NO_COLOUR, "reverb_prob": 1.0, "reverb_rt60_s": (0.3, 0.5)}
    click = torch.zeros(2, RATE)
    click[:, 100] = 1.0
    wet = colour(click, gen(3), RATE, **kw)  # type: ignore[arg-type]
    tail = wet[:, 2000:].abs().sum(1)
    assert bool((tail > 0.01).all())  # the click now rings on
    assert torch.equal(colour(click, gen(3), RATE, **kw), wet)  # type: ignore[arg-type]
