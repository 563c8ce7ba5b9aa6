"""The gate's level input, computed with the batch on the engine's device (torch)."""

from __future__ import annotations

import torch
from torch import Tensor

from stream_server.core.gate import LEVEL_FLOOR_DBFS

__all__ = ["levels_dbfs"]


def levels_dbfs(windows: Tensor, tail_samples: int = 0) -> Tensor:
    """RMS level of each window's last ``tail_samples`` samples, in dBFS.

    Args:
        windows: ``(batch, samples)`` audio in ``[-1, 1]`` (any float dtype, any device).
        tail_samples: How many of the newest samples to measure; ``0`` or more than ``samples``
            measures the whole window.

    Returns:
        ``(batch,)`` float32 levels in dBFS, on ``windows``' device, never below
        :data:`LEVEL_FLOOR_DBFS`.
    """
    if windows.ndim != 2:
        raise ValueError(f"windows must be (batch, samples), got shape {tuple(windows.shape)}")
    if tail_samples < 0:
        raise ValueError(f"tail_samples must be >= 0, got {tail_samples}")
    part = windows[:, -tail_samples:] if 0 < tail_samples < windows.shape[1] else windows
    if part.shape[1] == 0:
        return torch.full((part.shape[0],), LEVEL_FLOOR_DBFS, device=windows.device)
    power = part.double().square().mean(dim=1)
    floor = 10.0 ** (LEVEL_FLOOR_DBFS / 10.0)
    return (10.0 * torch.log10(power.clamp_min(floor))).float()
