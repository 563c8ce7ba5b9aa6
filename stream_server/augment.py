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
