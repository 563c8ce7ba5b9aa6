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

With ``context = "stream"`` (:class:`~stream_server.inference.preprocessing.MusicnnPreprocessing`)
the frames see the whole stream instead of one window: :meth:`MusicnnTokens.stream_raw` computes
a clip's tokens that way, :mod:`stream_server.inference.musicnn_stream` a live stream's, frame by
frame; frame ``j`` is then samples ``[256 j, 256 j + 512)``, final once :data:`LOOKAHEAD_FRAMES`
frames follow it.

Shapes: ``wave`` ``(batch, samples)`` float32 at ``pre.sample_rate`` Hz; frames
``samples // 256 + 1`` at 16 kHz; tokens ``frames // token_frames``.
"""

from __future__ import annotations

from typing import ClassVar, Final

import torch
import torchaudio.functional as AF
from torch import Tensor, nn

from stream_server.inference.musicnn import (
    HOP_LENGTH,
    MIDEND_KERNEL,
    N_FFT,
    SAMPLE_RATE,
    TEACHERS_DIR,
    MusicnnFeatures,
    load_musicnn,
    log_mel,
)
from stream_server.inference.preprocessing import (
    CONTEXTS,
    FRAME_FEATURES,
    POOLINGS,
    TOKEN_FEATURES,
    MusicnnPreprocessing,
)

#: Mel frames before and after a frame that its front-end features see (the 128-frame temporal
#: filter, padded as TensorFlow's "same": 63 before, 64 after).
FRONTEND_LEFT: Final = 63
FRONTEND_RIGHT: Final = 64
#: Frames before and after a frame that each mid-end layer sees.
MIDEND_SIDE: Final = MIDEND_KERNEL // 2
#: Mel frames after a frame needed before its features are final (stream context).
LOOKAHEAD_FRAMES: Final = FRONTEND_RIGHT + 3 * MIDEND_SIDE


def token_features(pre: MusicnnPreprocessing) -> int:
    """Features per token of ``pre``; raises ``ValueError`` for an unknown ``pooling``."""
    if pre.pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {sorted(POOLINGS)}, not {pre.pooling!r}")
    return POOLINGS[pre.pooling]


def token_count(pre: MusicnnPreprocessing) -> int:
    """Tokens of one window: ``frames // token_frames`` at musicnn's 16 ms hop."""
    samples = round(pre.window_seconds * SAMPLE_RATE)
    return (samples // HOP_LENGTH + 1) // pre.token_frames


def final_frames(samples: int) -> int:
    """Frames of a stream of ``samples`` samples (16 kHz) whose stream-context features are
    final: its mel frames (``[256 j, 256 j + 512)``) less the look-ahead; 0 if too short."""
    mel = (samples - N_FFT) // HOP_LENGTH + 1 if samples >= N_FFT else 0
    return max(0, mel - LOOKAHEAD_FRAMES)


def pool_runs(frames: Tensor, token_frames: int, pooling: str) -> Tensor:
    """``(batch, 753, n)`` -> ``(batch, POOLINGS[pooling], n // token_frames)``: the mean (then,
    for ``"mean+max"``, the maximum) of each run of ``token_frames`` frames."""
    tokens = frames.shape[2] // token_frames
    runs = frames[:, :, : tokens * token_frames].reshape(*frames.shape[:2], tokens, token_frames)
    if pooling == "mean":
        return runs.mean(dim=3)
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
        if pre.context not in CONTEXTS:
            raise ValueError(f"context must be one of {list(CONTEXTS)}, not {pre.context!r}")
        if pre.context == "stream" and pre.sample_rate != SAMPLE_RATE:
            raise ValueError(f"stream context needs {SAMPLE_RATE} Hz audio, not {pre.sample_rate}")
        self.tokens = token_count(pre)
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
        whatever ``pooling`` keeps), not standardised, each window on its own (``context``
        ``"window"``)."""
        wave = wave.float()
        if self.pre.sample_rate != SAMPLE_RATE:
            wave = AF.resample(wave, self.pre.sample_rate, SAMPLE_RATE)
        frames = self.net.midend_features(self.net.frontend_features(self.mel(wave)))
        return pool_runs(frames, self.pre.token_frames, "mean+max")

    def stream_raw(self, wave: Tensor) -> Tensor:
        """Stream-context tokens of whole clips, each a stream from its first sample:
        ``(batch, samples)`` at 16 kHz -> ``(batch, POOLINGS[pooling], final_frames(samples) //
        token_frames)``, not standardised. The reference the stream table is held to."""
        mel = log_mel(wave.float(), self.mel.window, self.mel.fbanks, center=False)
        frames = self.net.midend_features(self.net.frontend_features(mel))  # zeros: the start
        final = max(0, frames.shape[2] - LOOKAHEAD_FRAMES)
        return pool_runs(frames[:, :, :final], self.pre.token_frames, self.pre.pooling)

    def standardise(self, raw: Tensor, count: Tensor | None = None) -> Tensor:
        """The model input: ``(batch, POOLINGS[pooling], n)`` raw tokens -> ``(batch, features,
        1, n)`` standardised. With ``count``, only the last ``count[b]`` tokens of row ``b`` are
        the stream's; those before are set to 0 (the training mean: "nothing heard")."""
        x = (raw[:, : self.features] - self.mean) / self.std
        if count is not None:
            n = raw.shape[2]
            before = torch.arange(n, device=raw.device)[None, :] < (n - count)[:, None]
            x = x.masked_fill(before[:, None, :], 0.0)
        return x.unsqueeze(2)

    def forward(self, wave: Tensor) -> Tensor:
        """Windows on their own; with stream context each window is a stream that starts with
        it (its newest complete tokens, those it is too short for at 0)."""
        if self.pre.context == "window":
            return self.standardise(self.raw(wave))
        raw = self.stream_raw(wave)[:, :, -self.tokens :]
        count = torch.full((raw.shape[0],), raw.shape[2], device=raw.device)
        raw = torch.nn.functional.pad(raw, (self.tokens - raw.shape[2], 0))
        return self.standardise(raw, count)


__all__ = [
    "FRAME_FEATURES",
    "FRONTEND_LEFT",
    "FRONTEND_RIGHT",
    "LOOKAHEAD_FRAMES",
    "MIDEND_SIDE",
    "POOLINGS",
    "TOKEN_FEATURES",
    "MusicnnTokens",
    "final_frames",
    "pool_runs",
    "token_count",
    "token_features",
]
