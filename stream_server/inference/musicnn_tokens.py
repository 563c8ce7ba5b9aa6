"""Audio windows to the tokens of a frozen, pretrained musicnn front-end.

:class:`MusicnnTokens` is the features module of the hybrid ViT (the ViT paper's "hybrid
architecture": the patch sequence is a CNN's feature map, each 1x1 patch one token). musicnn
(:mod:`stream_server.inference.musicnn`) has heard the Million Song Dataset; its front- and mid-end
turn every 16 ms frame of a window into 753 features of timbre and rhythm. Runs of ``token_frames``
frames are pooled (mean and maximum) into one token, standardised, and handed to a ViT as a
``(batch, 1506, 1, tokens)`` "image" whose patches are 1x1.

The musicnn weights stay frozen: this module is always in eval mode (its ``train()`` is a
no-op), and they are not part of the ViT's checkpoint; ``weights`` in the preprocessing names
the shipped folder they come from.

Shapes: ``wave`` ``(batch, samples)`` float32 at ``pre.sample_rate`` Hz; frames
``samples // 256 + 1`` at 16 kHz; tokens ``frames // token_frames``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torchaudio.functional as AF
from torch import Tensor, nn

from stream_server.inference.musicnn import (
    HOP_LENGTH,
    SAMPLE_RATE,
    TEACHERS_DIR,
    MusicnnFeatures,
    load_musicnn,
)
from stream_server.inference.preprocessing import (
    FRAME_FEATURES,
    POOLINGS,
    TOKEN_FEATURES,
    MusicnnPreprocessing,
)


def token_features(pre: MusicnnPreprocessing) -> int:
    """Features per token of ``pre``; raises ``ValueError`` for an unknown ``pooling``."""
    if pre.pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {sorted(POOLINGS)}, not {pre.pooling!r}")
    return POOLINGS[pre.pooling]


def token_count(pre: MusicnnPreprocessing) -> int:
    """Tokens of one window: ``frames // token_frames`` at musicnn's 16 ms hop."""
    samples = round(pre.window_seconds * SAMPLE_RATE)
    return (samples // HOP_LENGTH + 1) // pre.token_frames


def pool_tokens(frames: Tensor, token_frames: int) -> Tensor:
    """``(batch, 753, frames)`` -> ``(batch, 1506, tokens)``: mean then maximum of each run of
    ``token_frames`` frames; frames left over at the end are dropped."""
    tokens = frames.shape[2] // token_frames
    runs = frames[:, :, : tokens * token_frames].reshape(*frames.shape[:2], tokens, token_frames)
    return torch.cat([runs.mean(dim=3), runs.amax(dim=3)], dim=1)


class MusicnnTokens(nn.Module):
    """``forward(wave)``: ``(batch, samples)`` -> ``(batch, features, 1, tokens)`` standardised
    tokens, ``features`` 753 or 1506 (:func:`token_features`).

    :meth:`raw` gives the tokens before standardisation (training computes the statistics from
    them). Raises ``ValueError`` for a preprocessing whose statistics have the wrong length.
    """

    input_name: ClassVar[str] = "pixel_values"
    mean: Tensor
    std: Tensor

    def __init__(self, pre: MusicnnPreprocessing) -> None:
        super().__init__()
        self.pre = pre
        name = pre.weights.removeprefix("musicnn_")
        if not (TEACHERS_DIR / pre.weights).is_dir() or name == pre.weights:
            raise ValueError(f"no musicnn weights {pre.weights!r} under {TEACHERS_DIR}")
        self.mel = MusicnnFeatures()
        self.net = load_musicnn(name).net
        self.features = token_features(pre)
        for key, values in (("feature_mean", pre.feature_mean), ("feature_std", pre.feature_std)):
            if values and len(values) != self.features:
                raise ValueError(f"{key} needs {self.features} values, got {len(values)}")
        mean = torch.tensor(pre.feature_mean or (0.0,) * self.features)
        std = torch.tensor(pre.feature_std or (1.0,) * self.features).clamp_min(1e-6)
        self.register_buffer("mean", mean[:, None], persistent=False)
        self.register_buffer("std", std[:, None], persistent=False)
        super().train(False)

    def train(self, mode: bool = True) -> MusicnnTokens:
        """Stays in eval mode: the pretrained batch norms must not move."""
        return self

    def raw(self, wave: Tensor) -> Tensor:
        """``(batch, samples)`` -> ``(batch, 1506, tokens)`` pooled features (mean and maximum,
        whatever ``pooling`` keeps), not standardised."""
        wave = wave.float()
        if self.pre.sample_rate != SAMPLE_RATE:
            wave = AF.resample(wave, self.pre.sample_rate, SAMPLE_RATE)
        frames = self.net.midend_features(self.net.frontend_features(self.mel(wave)))
        return pool_tokens(frames, self.pre.token_frames)

    def forward(self, wave: Tensor) -> Tensor:
        tokens = (self.raw(wave)[:, : self.features] - self.mean) / self.std
        return tokens.unsqueeze(2)


__all__ = [
    "FRAME_FEATURES",
    "POOLINGS",
    "TOKEN_FEATURES",
    "MusicnnTokens",
    "pool_tokens",
    "token_count",
    "token_features",
]
