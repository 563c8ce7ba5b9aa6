"""Training windows for the hybrid ViT: each clip's windows through the frozen musicnn front-end,
computed once and cached.

The front-end is frozen, so a window's tokens never change during training: :func:`clip_tokens`
computes them for every window on a grid (``hop_s`` apart, the last flush with the clip's end;
with stream context, the clip's tokens once and the windows runs of them, :func:`stream_windows`)
and keeps them in a ``.npy`` cache keyed by the clip, the weights and the grid. Augmented copies
of a clip (``variant``: a codec round trip, a band limit, ...) are cached beside the clean one.

Shapes: tokens ``(windows, 1506, tokens)`` float16 on disk, float32 in memory.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from stream_server.inference.musicnn import HOP_LENGTH, N_FFT
from stream_server.inference.musicnn_tokens import LOOKAHEAD_FRAMES, MusicnnTokens
from stream_server.training.dataset import FloatArray, cached_array, windows_of


def stream_windows(features: MusicnnTokens, audio: FloatArray, hop: int) -> FloatArray:
    """Stream-context tokens of every window, float16: ``(windows, POOLINGS[pooling], tokens)``.

    The clip is one stream (:meth:`MusicnnTokens.stream_raw`); its windows are runs of
    ``features.tokens`` consecutive tokens, about ``hop`` samples apart, the first at the clip's
    start. A clip too short for one window is padded with silence at its end.
    """
    n = features.tokens
    shortest = (n * features.pre.token_frames + LOOKAHEAD_FRAMES - 1) * HOP_LENGTH + N_FFT
    if audio.size < shortest:
        audio = np.pad(audio, (0, shortest - audio.size))
    with torch.inference_mode():
        raw = features.stream_raw(torch.from_numpy(audio)[None])[0].half()
    step = max(1, round(hop / (features.pre.token_frames * HOP_LENGTH)))
    starts = range(0, raw.shape[1] - n + 1, step)
    tokens: FloatArray = torch.stack([raw[:, s : s + n] for s in starts]).numpy()
    return tokens


def _tokens(features: MusicnnTokens, audio: FloatArray, hop: int, batch: int) -> FloatArray:
    """Raw tokens of every window, float16 (what the cache stores)."""
    if features.pre.context == "stream":
        return stream_windows(features, audio, hop)
    window = features.pre.window_samples
    if audio.size < window:
        audio = np.pad(audio, (0, window - audio.size))
    wins = windows_of(audio, window, hop)
    out = []
    with torch.inference_mode():
        for i in range(0, len(wins), batch):
            out.append(features.raw(torch.from_numpy(wins[i : i + batch])).half())
    tokens: FloatArray = torch.cat(out).numpy()
    return tokens


def clip_tokens(
    features: MusicnnTokens,
    audio: FloatArray,
    key: str,
    cache_dir: Path | None,
    *,
    hop_s: float,
    variant: str = "clean",
    batch: int = 16,
) -> npt.NDArray[np.float32]:
    """``(windows, 1506, tokens)`` raw tokens of ``audio`` (``(samples,)`` at the features' rate)
    on a ``hop_s`` grid, through the cache; ``key`` names the clip (and the weights)."""
    pre = features.pre
    ident = (
        f"tokens|{key}|{variant}|{pre.weights}|{pre.window_seconds}|{pre.token_frames}|{hop_s}"
        + ("|stream" if pre.context == "stream" else "")
    )
    digest = hashlib.sha1(ident.encode()).hexdigest()
    path = cache_dir / f"tok-{digest}.npy" if cache_dir else None
    hop = max(1, round(hop_s * pre.sample_rate))
    tokens = cached_array(path, lambda: _tokens(features, audio, hop, batch))
    return tokens.astype(np.float32, copy=False)
