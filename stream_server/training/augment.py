"""Training-time augmentation for audio windows and their log-mel images.

Pure functions on tensors; every random draw comes from the ``torch.Generator`` passed in, so a
seeded run is repeatable. Waveforms are ``(batch, samples)``; images are
``(batch, channels, height, width)`` with frequency along the height and time along the width;
targets are ``(batch, labels)`` probabilities.

Gain is deliberately absent: the features are in dB against each window's own maximum, so a gain
change leaves them unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor


def add_noise(
    wave: Tensor, gen: torch.Generator, *, prob: float, snr_db: tuple[float, float]
) -> Tensor:
    """Add white noise to a random ``prob`` share of the windows, at an SNR drawn from ``snr_db``.

    The SNR (dB) is against each window's own mean power; silent windows stay silent.
    """
    batch = wave.shape[0]
    chosen = torch.rand(batch, generator=gen) < prob
    if not bool(chosen.any()):
        return wave
    lo, hi = snr_db
    snr = lo + (hi - lo) * torch.rand(batch, generator=gen)
    power = wave.square().mean(dim=1).cpu()  # the draws are on the generator's CPU
    noise_power = power / torch.pow(10.0, snr / 10.0)
    noise = torch.randn(wave.shape, generator=gen) * noise_power.sqrt().unsqueeze(1)
    noise = noise * chosen.unsqueeze(1).to(noise.dtype)
    return wave + noise.to(wave.device, wave.dtype)


def _mask_axis(
    images: Tensor, gen: torch.Generator, axis: int, count: int, max_width: int
) -> Tensor:
    size = images.shape[axis]
    if count <= 0 or max_width <= 0 or size == 0:
        return torch.zeros(images.shape[0], 1, 1, 1, dtype=torch.bool, device=images.device)
    batch = images.shape[0]
    width = torch.randint(0, max_width + 1, (batch, count), generator=gen)
    start = (torch.rand(batch, count, generator=gen) * (size - width + 1).clamp_min(1)).long()
    pos = torch.arange(size).view(1, 1, -1)
    hit = ((pos >= start.unsqueeze(-1)) & (pos < (start + width).unsqueeze(-1))).any(dim=1)
    shape = [batch, 1, 1, 1]
    shape[axis] = size
    return hit.view(shape).to(images.device)


def spec_mask(
    images: Tensor,
    gen: torch.Generator,
    *,
    freq_masks: int,
    max_freq: int,
    time_masks: int,
    max_time: int,
) -> Tensor:
    """SpecAugment-style masking: ``freq_masks`` bands of up to ``max_freq`` rows and
    ``time_masks`` stretches of up to ``max_time`` columns, filled with each image's mean."""
    hit = torch.zeros(images.shape[0], 1, 1, 1, dtype=torch.bool, device=images.device)
    hit = hit | _mask_axis(images, gen, 2, freq_masks, max_freq)
    hit = hit | _mask_axis(images, gen, 3, time_masks, max_time)
    fill = images.mean(dim=(1, 2, 3), keepdim=True)
    return torch.where(hit, fill, images)


def mixup(
    images: Tensor, targets: Tensor, gen: torch.Generator, *, alpha: float, prob: float
) -> tuple[Tensor, Tensor]:
    """With probability ``prob``, blend the batch with a shuffled copy of itself.

    One ``lam ~ Beta(alpha, alpha)`` per batch: ``lam * x + (1 - lam) * x[perm]`` for images and
    targets alike. Returns the inputs unchanged otherwise.
    """
    if alpha <= 0 or float(torch.rand((), generator=gen)) >= prob:
        return images, targets
    lam = beta_quantile(alpha, float(torch.rand((), generator=gen)))
    perm = torch.randperm(images.shape[0], generator=gen).to(images.device)
    return (
        lam * images + (1.0 - lam) * images[perm],
        lam * targets + (1.0 - lam) * targets[perm],
    )


def beta_quantile(alpha: float, u: float) -> float:
    """The ``u`` quantile of ``Beta(alpha, alpha)``, from its CDF tabulated on a fine grid.

    Used to draw mixup weights from a seeded uniform: ``torch.distributions.Beta`` cannot take a
    generator.
    """
    grid = torch.linspace(1e-4, 1 - 1e-4, 2001, dtype=torch.float64)
    pdf = (grid * (1.0 - grid)) ** (alpha - 1.0)  # Beta(alpha, alpha) density, unnormalised
    cdf = torch.cumsum(pdf, 0)
    cdf = cdf / cdf[-1]
    idx = int(torch.searchsorted(cdf, torch.tensor([u], dtype=torch.float64)).clamp(max=2000))
    return float(grid[idx])


def colour(
    wave: Tensor,
    gen: torch.Generator,
    sample_rate: int,
    *,
    lowpass_prob: float,
    lowpass_hz: tuple[float, ...],
    tilt_prob: float,
    tilt_db_per_octave: float,
    reverb_prob: float,
    reverb_rt60_s: tuple[float, float],
) -> Tensor:
    """Imitate how sources differ: band-limiting, spectral tilt and room reverberation.

    Each applies to a random share of the windows, all in one FFT of the windows concerned:

    - a low-pass at a cutoff drawn from ``lowpass_hz`` (a half-octave raised-cosine roll-off), as
      an old recording or a narrow-band stream sounds (e.g. 4000 Hz: an 8 kHz file);
    - a tilt of up to ``±tilt_db_per_octave`` dB per octave around 1 kHz (an EQ, a microphone);
    - reverberation: exponentially decaying noise with an RT60 drawn from ``reverb_rt60_s``
      (seconds), mixed in at a random wet share of up to 50 %.

    ``wave`` is ``(batch, samples)`` at ``sample_rate`` Hz; the result has the same shape and
    each window's original RMS (so levels do not drift). The draws do not depend on the data.
    """
    batch, samples = wave.shape
    lowpass = torch.rand(batch, generator=gen) < lowpass_prob
    pick = torch.randint(0, max(1, len(lowpass_hz)), (batch,), generator=gen)
    tilt = torch.rand(batch, generator=gen) < tilt_prob
    slope = tilt_db_per_octave * (2 * torch.rand(batch, generator=gen) - 1)
    reverb = torch.rand(batch, generator=gen) < reverb_prob
    rt_lo, rt_hi = reverb_rt60_s
    rt60 = rt_lo + (rt_hi - rt_lo) * torch.rand(batch, 1, generator=gen)
    wet = 0.5 * torch.rand(batch, 1, generator=gen)
    lowpass &= len(lowpass_hz) > 0
    rows = (lowpass | tilt | reverb).nonzero().squeeze(1)
    if rows.numel() == 0:
        return wave
    ir_len = int(rt_hi * sample_rate) if bool(reverb[rows].any()) else 0
    n_fft = samples + ir_len
    freqs = torch.fft.rfftfreq(n_fft, d=1.0 / sample_rate).unsqueeze(0)  # (1, bins)
    gain = torch.ones(rows.numel(), freqs.shape[1])
    if bool(lowpass[rows].any()):
        cutoff = torch.tensor(lowpass_hz)[pick[rows]].unsqueeze(1)
        octaves = torch.log2(freqs.clamp_min(1.0) / cutoff)  # 0 at the cutoff
        ramp = 0.5 * (1 + torch.cos(torch.pi * (octaves / 0.5).clamp(0.0, 1.0)))
        gain = torch.where(lowpass[rows].unsqueeze(1), ramp, gain)
    dbs = (slope * tilt.float())[rows].unsqueeze(1) * torch.log2(freqs.clamp_min(20.0) / 1000.0)
    gain = gain * torch.pow(10.0, dbs / 20.0)
    chosen = wave[rows].float().cpu()
    spectrum = torch.fft.rfft(chosen, n=n_fft) * gain
    if ir_len:
        t = torch.arange(ir_len).unsqueeze(0) / sample_rate
        ir = torch.randn(rows.numel(), ir_len, generator=gen) * torch.pow(
            10.0, -3.0 * t / rt60[rows]
        )
        ir = ir / ir.square().sum(dim=1, keepdim=True).sqrt()
        mix = wet[rows] * reverb[rows].unsqueeze(1).float()
        spectrum = spectrum * (1 - mix + mix * torch.fft.rfft(ir, n=n_fft))
    out = torch.fft.irfft(spectrum, n=n_fft)[:, :samples]
    before = chosen.square().mean(dim=1, keepdim=True).sqrt()
    after = out.square().mean(dim=1, keepdim=True).sqrt().clamp_min(1e-8)
    result = wave.clone()
    result[rows.to(wave.device)] = (out * (before / after)).to(wave.device, wave.dtype)
    return result
