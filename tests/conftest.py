"""Shared fixtures: a tiny ViT checkpoint saved to disk, test configs, synthetic music."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import torch

from stream_server.config import Config, config_from_dict
from stream_server.model import LoadedModel, load_model, save_checkpoint, tiny_vit
from stream_server.preprocessing import AudioPreprocessing

LABELS = ("blues", "classical", "jazz", "rock")
SHARED_GENRES = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "genres"

#: A test's timeouts, in seconds, are multiples of this (raise it on a slow machine).
TIMEOUT_S = float(os.environ.get("GENRECAST_TEST_TIMEOUT_S", "20"))


def cuda_param() -> Any:
    """``"cuda"`` as a parameter that is skipped without a GPU, unless GENRECAST_REQUIRE_CUDA=1."""
    required = os.environ.get("GENRECAST_REQUIRE_CUDA") == "1"
    missing = not torch.cuda.is_available()
    marks = [pytest.mark.cuda]
    if missing and not required:
        marks.append(
            pytest.mark.skip(reason="no CUDA device (set GENRECAST_REQUIRE_CUDA=1 to fail)")
        )
    return pytest.param("cuda", marks=marks)


DEVICES = ["cpu", cuda_param()]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny ViT over 2 s windows, saved with ``save_pretrained``."""
    pre = AudioPreprocessing(image_size=(64, 64), window_seconds=2.0)
    model, pre = tiny_vit(LABELS, pre, seed=1)
    return save_checkpoint(model, pre, tmp_path_factory.mktemp("tiny-vit"))


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint: Path) -> LoadedModel:
    return load_model(str(tiny_checkpoint))


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Config]:
    """Config for a test server: free port, a SQLite file in tmp_path, short windows.

    Keyword arguments are tables, e.g. ``engine={"hop_s": 0.25}``; they update the defaults.
    """

    def make(**tables: dict[str, Any]) -> Config:
        raw: dict[str, dict[str, Any]] = {
            "server": {"port": 0, "log_level": "warning"},
            "engine": {"device": "cpu", "hop_s": 0.5, "max_wait_ms": 5.0},
            "smoothing": {"time_constant_s": 1.0, "min_dwell_s": 1.0},
            "storage": {"database": str(tmp_path / "timeline.db")},
        }
        for name, values in tables.items():
            raw.setdefault(name, {}).update(values)
        return config_from_dict(raw)

    return make


def music(seconds: float, rate: int = 44100, channels: int = 2, seed: int = 0) -> np.ndarray:
    """Synthetic music: chords of decaying harmonic tones plus a noise beat.

    Returns ``(frames, channels)`` float32 in [-1, 1].
    """
    rng = np.random.default_rng(seed)
    n = round(seconds * rate)
    t = np.arange(n) / rate
    out = np.zeros(n, dtype=np.float64)
    beat = 0.5
    for start in np.arange(0.0, seconds, beat):
        i0 = round(start * rate)
        seg = t[i0 : i0 + round(beat * rate)] - start
        root = 110.0 * 2 ** (rng.integers(0, 12) / 12)
        env = np.exp(-4 * seg)
        for ratio in (1.0, 1.25, 1.5, 2.0):
            out[i0 : i0 + seg.size] += 0.15 * env * np.sin(2 * np.pi * root * ratio * seg)
        out[i0 : i0 + seg.size] += 0.05 * np.exp(-30 * seg) * rng.standard_normal(seg.size)
    stereo = np.stack([out * (1.0 - 0.2 * c) for c in range(channels)], axis=1)
    return np.clip(stereo, -1, 1).astype(np.float32)


def encode_audio(
    path: Path,
    frames: np.ndarray,
    rate: int,
    *,
    codec: str = "pcm_s16le",
    container_format: str | None = None,
) -> Path:
    """Encode ``(frames, channels)`` float32 audio at ``rate`` Hz to ``path`` with PyAV."""
    channels = frames.shape[1]
    layout = "mono" if channels == 1 else "stereo"
    with av.open(str(path), "w", format=container_format) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        pts = 0
        for start in range(0, len(frames), 1024):
            block = np.ascontiguousarray(frames[start : start + 1024], dtype=np.float32)
            frame = av.AudioFrame.from_ndarray(block.reshape(1, -1), format="flt", layout=layout)
            frame.sample_rate = rate
            frame.pts = pts
            pts += len(block)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def to_s16le(frames: np.ndarray) -> bytes:
    return (np.clip(frames, -1, 1) * 32767).astype("<i2").tobytes()


def real_clip(genre: str = "jazz") -> Path:
    """A real clip from the shared data set, or skip the test if the data is absent."""
    folder = SHARED_GENRES / genre
    clips = sorted(folder.glob("*.opus")) if folder.is_dir() else []
    if not clips:
        pytest.skip(f"shared data set not found at {SHARED_GENRES}")
    return clips[0]
