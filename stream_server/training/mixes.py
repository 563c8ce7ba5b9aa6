"""Mixes of labelled clips and how well a timeline follows them: the pure part of
``genrecast evaluate --mixes``.

A :class:`Mix` is a sequence of parts, each a stretch of one clip; consecutive parts have
different genres. Every position is a whole number of hops (samples at the model's rate), so a
window of the mix that lies inside one part is exactly a window of that part's clip on the clip's
own hop grid, and its scores can be reused (:func:`window_source`); only the windows that straddle
two parts need the model again.

Scoring compares a timeline with the truth:

* :func:`seconds_right` -- the share of seconds whose midpoint the timeline labels right;
* :func:`change_delays` -- for each true change, how long after it the live label first showed
  the new genre (``None``: never, before the next change);
* :func:`changes_missed` -- true changes whose genre the timeline never shows within its part;
* :func:`label_changes` -- how often a run of labels changes (false changes on one-genre clips).

Times are seconds; positions and lengths in samples. No I/O.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from stream_server.core.timeline import Segment

__all__ = [
    "Mix",
    "MixPart",
    "build_mixes",
    "change_delays",
    "changes_missed",
    "label_at",
    "label_changes",
    "mix_window",
    "percentile",
    "seconds_right",
    "window_ends",
    "window_source",
]


@dataclass(frozen=True)
class MixPart:
    """``length`` samples of clip number ``clip`` (genre ``label``) from sample ``clip_start``."""

    clip: int
    label: str
    clip_start: int
    length: int


@dataclass(frozen=True)
class Mix:
    """Parts played one after the other; ``rate`` is the sample rate in Hz."""

    parts: tuple[MixPart, ...]
    rate: int

    @property
    def length(self) -> int:
        """Samples in the mix."""
        return sum(p.length for p in self.parts)

    @property
    def starts(self) -> list[int]:
        """Where each part starts in the mix, in samples."""
        out, at = [], 0
        for part in self.parts:
            out.append(at)
            at += part.length
        return out

    @property
    def duration_s(self) -> float:
        return self.length / self.rate

    def boundaries_s(self) -> list[float]:
        """Start of each part, in seconds (the first is 0)."""
        return [s / self.rate for s in self.starts]

    def truth_at(self, time_s: float) -> str:
        """The genre playing at ``time_s`` (the last part's after the end)."""
        i = bisect.bisect_right(self.boundaries_s(), time_s) - 1
        return self.parts[max(i, 0)].label


def build_mixes(
    clips: Sequence[tuple[str, int]],
    count: int,
    *,
    seed: int,
    rate: int,
    hop: int,
    parts: int = 6,
    min_s: float = 10.0,
    max_s: float = 40.0,
) -> list[Mix]:
    """``count`` random mixes of ``parts`` parts each.

    Args:
        clips: ``(genre, length in samples)`` of every clip that may be used.
        seed: Seed of the random choices: the same arguments give the same mixes.
        rate: Sample rate, Hz.
        hop: Every part starts and lasts a whole number of ``hop`` samples, in its clip and in
            the mix.
        parts: Parts per mix; consecutive parts have different genres.
        min_s, max_s: Each part lasts a random whole number of hops between these (seconds),
            but no longer than its clip.

    Each part's genre is drawn uniformly among the genres other than the previous part's, then
    its clip uniformly among that genre's clips not used yet in the mix (any of them once all
    are), then its start uniformly where the stretch fits.

    Raises:
        ValueError: fewer than two genres, or bad numbers.
    """
    if count < 0 or parts < 1 or hop <= 0 or rate <= 0:
        raise ValueError("count must be >= 0, parts >= 1, hop and rate > 0")
    if not 0 < min_s <= max_s:
        raise ValueError(f"need 0 < min_s <= max_s, got {min_s!r}, {max_s!r}")
    by_genre: dict[str, list[int]] = {}
    for i, (label, length) in enumerate(clips):
        if length >= hop:
            by_genre.setdefault(label, []).append(i)
    genres = sorted(by_genre)
    if len(genres) < 2:
        raise ValueError(f"mixes need clips of at least two genres, got {genres}")
    rng = random.Random(seed)
    low = max(1, math.ceil(min_s * rate / hop))
    high = max(low, math.floor(max_s * rate / hop))
    mixes: list[Mix] = []
    for _ in range(count):
        chosen: list[MixPart] = []
        used: set[int] = set()
        previous: str | None = None
        for _ in range(parts):
            genre = rng.choice([g for g in genres if g != previous])
            fresh = [c for c in by_genre[genre] if c not in used] or by_genre[genre]
            clip = rng.choice(fresh)
            used.add(clip)
            hops_in_clip = clips[clip][1] // hop
            length = min(rng.randint(low, high), hops_in_clip)
            start = rng.randint(0, hops_in_clip - length)
            chosen.append(MixPart(clip, genre, start * hop, length * hop))
            previous = genre
        mixes.append(Mix(tuple(chosen), rate))
    return mixes


def window_ends(length: int, window: int, hop: int) -> list[int]:
    """End samples of the windows a live session computes over ``length`` samples: one full
    ``window``, then every ``hop`` (none when ``length < window``)."""
    if length < window:
        return []
    return list(range(window, length + 1, hop))


def window_source(mix: Mix, end: int, window: int, hop: int) -> tuple[int, int] | None:
    """Where the mix window ending at sample ``end`` comes from.

    Returns:
        ``(part index, k)`` when the window lies inside one part: it is window ``k`` of that
        part's clip on the clip's own grid (``window_ends(clip length, window, hop)[k]``); else
        ``None`` (it straddles two parts).
    """
    start = end - window
    starts = mix.starts
    i = bisect.bisect_right(starts, start) - 1
    part = mix.parts[i]
    if end > starts[i] + part.length:
        return None
    offset = part.clip_start + start - starts[i]
    if offset % hop:
        raise ValueError("mix positions must be whole hops")
    return i, offset // hop


def mix_window(mix: Mix, audio: Sequence[np.ndarray], end: int, window: int) -> np.ndarray:
    """The mix's samples ``[end - window, end)`` as ``(window,)`` float32; ``audio[c]`` is clip
    ``c``'s ``(samples,)`` audio."""
    out = np.empty(window, dtype=np.float32)
    start = end - window
    filled = 0
    for part, at in zip(mix.parts, mix.starts, strict=True):
        lo, hi = max(start, at), min(end, at + part.length)
        if lo >= hi:
            continue
        src = audio[part.clip][part.clip_start + lo - at : part.clip_start + hi - at]
        out[lo - start : hi - start] = src
        filled += hi - lo
    if filled != window:
        raise ValueError(f"window [{start}, {end}) is not inside the mix")
    return out


def label_at(segments: Sequence[Segment], time_s: float) -> str | None:
    """The label of the segment covering ``time_s`` (a segment covers ``[start_s, end_s)``, the
    last one its end too), or ``None``."""
    starts = [s.start_s for s in segments]
    i = bisect.bisect_right(starts, time_s) - 1
    if i < 0:
        return None
    seg = segments[i]
    last = i == len(segments) - 1
    if time_s < seg.end_s or (last and time_s <= seg.end_s):
        return seg.genre
    return None


def seconds_right(segments: Sequence[Segment], mix: Mix) -> tuple[int, int]:
    """``(right, total)``: of the whole seconds of ``mix``, how many the timeline labels with the
    genre playing at their midpoint (a second the timeline does not cover counts as wrong)."""
    total = math.floor(mix.duration_s + 1e-9)
    right = sum(label_at(segments, k + 0.5) == mix.truth_at(k + 0.5) for k in range(total))
    return right, total


def change_delays(shown: Sequence[tuple[float, str]], mix: Mix) -> list[float | None]:
    """How long after each true change the live label first showed the new genre.

    Args:
        shown: ``(time_s, label)`` of every live update, in time order.
        mix: The truth.

    Returns:
        One entry per change (every part after the first): seconds from the change to the
        first update at or after it, and before the next change, that shows the new genre;
        ``None`` when none does.
    """
    times = [t for t, _ in shown]
    bounds = [*mix.boundaries_s(), mix.duration_s + 1e-9]
    out: list[float | None] = []
    for i in range(1, len(mix.parts)):
        begin, end, genre = bounds[i], bounds[i + 1], mix.parts[i].label
        delay = None
        for j in range(bisect.bisect_left(times, begin - 1e-9), len(shown)):
            t, label = shown[j]
            if t >= end - 1e-9:
                break
            if label == genre:
                delay = max(0.0, t - begin)
                break
        out.append(delay)
    return out


def changes_missed(segments: Sequence[Segment], mix: Mix) -> int:
    """True changes whose new genre the timeline labels no whole second of its part with."""
    bounds = [*mix.boundaries_s(), mix.duration_s]
    missed = 0
    for i in range(1, len(mix.parts)):
        seconds = range(math.ceil(bounds[i] - 1e-9), math.floor(bounds[i + 1] + 1e-9))
        if not any(label_at(segments, k + 0.5) == mix.parts[i].label for k in seconds):
            missed += 1
    return missed


def label_changes(labels: Sequence[str]) -> int:
    """How many times a run of labels changes from one to another."""
    return sum(a != b for a, b in itertools.pairwise(labels))


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100, linear) of ``values``; ``None`` when empty."""
    if not values:
        return None
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))
