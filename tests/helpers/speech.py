"""A deterministic stand-in for a speech model, and the audio it answers to.

:class:`ToneSpeech` has the speech detector's interface (:mod:`stream_server.core.gate`):
``forward(wave)`` takes ``(batch, samples)`` float32 windows and returns ``(batch,)``
probabilities. It calls "speech" what carries a marker tone: each window's probability is the
share of its power at ``freq`` Hz, so a stretch of :func:`marker` audio is speech and music is
not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

#: The marker tone's frequency, Hz: far above the test music's harmonics.
MARKER_HZ = 3000.0


class ToneSpeech(nn.Module):
    """Speech probability = share of each window's power in a sinusoid at ``freq`` Hz."""

    def __init__(self, rate: int, freq: float = MARKER_HZ) -> None:
        super().__init__()
        self.rate = rate
        self.freq = freq

    def forward(self, wave: Tensor) -> Tensor:
        n = wave.shape[1]
        t = torch.arange(n, device=wave.device, dtype=torch.float64) / self.rate
        phase = 2 * math.pi * self.freq * t
        x = wave.double()
        a = (x * torch.cos(phase)).sum(dim=1) * 2 / n
        b = (x * torch.sin(phase)).sum(dim=1) * 2 / n
        tone = (a.square() + b.square()) / 2
        power = x.square().mean(dim=1).clamp_min(1e-12)
        return (tone / power).clamp(0.0, 1.0).float()


def marker(seconds: float, rate: int, channels: int = 2, level: float = 0.3) -> np.ndarray:
    """``(frames, channels)`` float32 of the marker tone at amplitude ``level``."""
    t = np.arange(round(seconds * rate)) / rate
    tone = (level * np.sin(2 * np.pi * MARKER_HZ * t)).astype(np.float32)
    return np.repeat(tone[:, None], channels, axis=1)


def write_speech_set(
    root: Path, speech: Sequence[np.ndarray], music: Sequence[np.ndarray], rate: int
) -> Path:
    """A speech set as ``genrecast train-speech`` and ``evaluate --speech`` read it: clip ``i``
    of ``speech`` as ``speech/s{i}.wav`` (speaker ``i``), of ``music`` as ``music/m{i}.wav``
    (band ``i``), and ``MANIFEST.tsv``. Clips are ``(frames, channels)`` float32 at ``rate``."""
    from tests.helpers.audio import encode_audio

    rows = ["file\tlabel\tsource_repo\tsource_path\tspeaker_or_artist"]
    for label, clips, stem, who in (
        ("speech", speech, "s", "speaker"),
        ("music", music, "m", "band"),
    ):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i, audio in enumerate(clips):
            name = f"{label}/{stem}{i}.wav"
            encode_audio(root / name, audio, rate)
            rows.append(f"{name}\t{label}\tsynthetic\t-\t{who} {i}")
    (root / "MANIFEST.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root
