"""Which torch device the model runs on, from the ``engine.device`` setting."""

from __future__ import annotations

import torch

from stream_server.errors import ConfigError


def pick_device(name: str) -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("engine.device", f"{name!r} asked for, but no CUDA device is available")
    return device
