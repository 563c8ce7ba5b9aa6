"""The bench's audio: a few clips decoded once (or synthetic music), stored for the pushers, and
each stream's clip, offset and start phase."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from stream_server.errors import DatasetError, DecodeError
from stream_server.tools.bench.options import SYNTHETIC_CLIP_S

log = logging.getLogger(__name__)

Pcm = npt.NDArray[np.int16]

#: Golden-ratio step: streams that share a clip start it far apart.
_SPREAD = 0.6180339887498949


@dataclass(frozen=True)
class ClipSet:
    """Mono s16 clips at ``sample_rate`` Hz, one after another in the ``.npy`` file ``path``:
    clip ``i`` is ``bounds[i] = (start, stop)`` (samples). ``source`` says where they came from."""

    path: str
    bounds: tuple[tuple[int, int], ...]
    sample_rate: int
    source: str

    def load(self) -> list[Pcm]:
        """The clips, read from :attr:`path`."""
        audio: Pcm = np.load(self.path)
        return [audio[a:b] for a, b in self.bounds]


@dataclass(frozen=True)
class StreamPlan:
    """Stream ``index`` of a run: it plays clip ``clip`` from sample ``offset``, looped, and
    sends its first frame ``phase_s`` seconds (wall time) after the run's start."""

    index: int
    clip: int
    offset: int
    phase_s: float


def pick_clips(root: Path, count: int) -> list[Path]:
    """Up to ``count`` audio files under ``root`` (a folder per genre), one genre after another:
    the first clip of each genre, then the second, and so on."""
    from stream_server.training.dataset import scan

    by_genre: dict[str, list[str]] = {}
    for clip in scan(root):
        by_genre.setdefault(clip.label, []).append(clip.path)
    rounds = max((len(paths) for paths in by_genre.values()), default=0)
    order = [paths[i] for i in range(rounds) for paths in by_genre.values() if i < len(paths)]
    return [root / path for path in order[:count]]


def to_pcm(audio: npt.NDArray[np.float32]) -> Pcm:
    """Float samples in ``[-1, 1]`` as int16 (clipped)."""
    pcm: Pcm = np.clip(np.rint(audio * 32767.0), -32768, 32767).astype(np.int16)
    return pcm


def decode_clips(paths: Sequence[Path], sample_rate: int, min_samples: int) -> list[Pcm]:
    """The files as mono int16 at ``sample_rate`` Hz; files that do not decode, or hold fewer
    than ``min_samples`` samples, are left out."""
    from stream_server.media.decode import decode_mono

    clips = []
    for path in paths:
        try:
            audio = decode_mono(str(path), sample_rate)
        except DecodeError as exc:
            log.warning("left out %s: %s", path, exc)
            continue
        if audio.size >= min_samples:
            clips.append(to_pcm(audio))
    return clips


def synthetic_music(seconds: float, rate: int, seed: int) -> npt.NDArray[np.float32]:
    """``(n,)`` float32 in ``[-1, 1]``: a chord of four decaying harmonic tones every beat
    (0.5 s) with a noise hit, and a bass note every bar (2 s); vectorised over the beats."""
    rng = np.random.default_rng(seed)
    n = round(seconds * rate)
    beat = max(1, round(0.5 * rate))
    beats = -(-n // beat)
    t = np.arange(beat) / rate
    roots = 110.0 * 2.0 ** (rng.integers(0, 12, size=beats) / 12.0)
    ratios = np.array([1.0, 1.25, 1.5, 2.0])
    cycles = 2.0 * np.pi * roots[:, None] * t[None, :]
    chord = np.sin(ratios[:, None, None] * cycles[None]).sum(axis=0)
    out = 0.12 * np.exp(-4.0 * t) * chord
    out += 0.05 * np.exp(-30.0 * t) * rng.standard_normal((beats, beat))
    bar_roots = np.repeat(roots[::4], 4)[:beats]
    bar_t = (np.arange(beats) % 4)[:, None] * (beat / rate) + t[None, :]
    out += 0.2 * np.exp(-1.5 * bar_t) * np.sin(np.pi * bar_roots[:, None] * bar_t)
    music: npt.NDArray[np.float32] = np.clip(out.reshape(-1)[:n], -1.0, 1.0).astype(np.float32)
    return music


def synthetic_clips(count: int, sample_rate: int) -> list[Pcm]:
    """``count`` different synthetic clips of :data:`SYNTHETIC_CLIP_S` seconds, as int16."""
    return [to_pcm(synthetic_music(SYNTHETIC_CLIP_S, sample_rate, seed)) for seed in range(count)]


def save_clips(clips: Sequence[Pcm], path: Path, sample_rate: int, source: str) -> ClipSet:
    """Write ``clips`` one after another to ``path`` (``.npy``)."""
    stops = np.cumsum([len(c) for c in clips]).tolist()
    starts = [0, *stops[:-1]]
    np.save(path, np.concatenate(clips))
    return ClipSet(str(path), tuple(zip(starts, stops, strict=True)), sample_rate, source)


def prepare_clips(
    audio_dir: Path | None, count: int, sample_rate: int, min_samples: int, path: Path
) -> ClipSet:
    """Up to ``count`` clips decoded from ``audio_dir`` at ``sample_rate`` Hz, or synthetic music
    when there is no directory or nothing in it decodes; saved to ``path``."""
    clips: list[Pcm] = []
    source = "synthetic"
    if audio_dir is not None:
        try:
            clips = decode_clips(pick_clips(audio_dir, count), sample_rate, min_samples)
        except DatasetError as exc:
            log.warning("no clips from %s (%s): synthetic audio instead", audio_dir, exc)
        if clips:
            source = f"{len(clips)} clips decoded from {audio_dir}"
    if not clips:
        clips = synthetic_clips(count, sample_rate)
        source = f"{len(clips)} synthetic clips"
    return save_clips(clips, path, sample_rate, source)


def plan_streams(
    streams: int,
    clip_lengths: Sequence[int],
    phase_span_s: float,
    *,
    same_instant: bool = False,
    seed: int = 0,
) -> list[StreamPlan]:
    """Each stream's clip (round robin), offset into it (spread by the golden ratio) and start
    phase: uniform in ``[0, phase_span_s)`` seconds (a hop of wall time), or 0 for all with
    ``same_instant``."""
    rng = np.random.default_rng(seed)
    phases = np.zeros(streams) if same_instant else rng.uniform(0.0, phase_span_s, streams)
    plans = []
    for i in range(streams):
        clip = i % len(clip_lengths)
        offset = int((i * _SPREAD) % 1.0 * clip_lengths[clip])
        plans.append(StreamPlan(i, clip, offset, float(phases[i])))
    return plans


def looped(clip: Pcm, position: int, size: int) -> Pcm:
    """``size`` samples of ``clip`` from ``position``, wrapping around its end."""
    start = position % len(clip)
    if start + size <= len(clip):
        return clip[start : start + size]
    return np.take(clip, np.arange(start, start + size), mode="wrap")
