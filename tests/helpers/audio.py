"""Audio for tests: synthetic music, encoded files, PCM bytes, and clips of the shared data set."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from tests.helpers.constants import SHARED_GENRES


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
    found = sorted(folder.glob("*.opus")) if folder.is_dir() else []
    if not found:
        pytest.skip(f"shared data set not found at {SHARED_GENRES}")
    return found[0]


def clips(genre: str, count: int) -> list[Path]:
    """The first ``count`` clips of ``genre`` in the shared data set, or skip the test."""
    folder = SHARED_GENRES / genre
    found = sorted(folder.glob("*.opus"))[:count] if folder.is_dir() else []
    if len(found) < count:
        pytest.skip(f"shared data set not found at {SHARED_GENRES}")
    return found


def music_source(tmp_path: Path) -> Path:
    """A real clip from the shared data set if present, else synthetic music as WAV."""
    found = sorted((SHARED_GENRES / "jazz").glob("*.opus")) if SHARED_GENRES.is_dir() else []
    if found:
        return found[0]
    return encode_audio(tmp_path / "music.wav", music(12.0, 44100), 44100)


def stored(samples: np.ndarray) -> np.ndarray:
    """What a stream's ring buffer gives back for float samples: 16-bit PCM steps
    (:mod:`ring_buffer.buffer`), clipped to full scale; float32."""
    steps = np.clip(np.rint(np.asarray(samples, np.float64) * 32768), -32768, 32767)
    return (steps / 32768).astype(np.float32)
