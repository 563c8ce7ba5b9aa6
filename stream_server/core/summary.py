"""What a stream was: its main genres, their shares, the genres it went through.

:func:`summarize` reads a genre timeline (:class:`~stream_server.core.timeline.Segment`, seconds
of stream time) and is pure. ``GET /streams`` gives the summary of every stream, and
``genrecast push`` prints it when its stream ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from stream_server.core.timeline import Segment

__all__ = ["MAX_PASSAGES", "GenreShare", "Passage", "StreamSummary", "summarize"]

#: The most passages (runs of one genre) a summary keeps: the latest ones, and the count of
#: the earlier ones.
MAX_PASSAGES = 50


@dataclass(frozen=True)
class GenreShare:
    """One genre's part of a stream: ``seconds`` of stream time, ``share`` of the whole
    (``0..1``)."""

    genre: str
    seconds: float
    share: float

    def to_dict(self) -> dict[str, object]:
        return {
            "genre": self.genre,
            "seconds": round(self.seconds, 1),
            "share": round(self.share, 4),
        }


@dataclass(frozen=True)
class Passage:
    """A run of one genre from ``start_s`` to ``end_s`` (seconds of stream time): neighbouring
    segments of the same genre make one passage."""

    start_s: float
    end_s: float
    genre: str

    def to_dict(self) -> dict[str, object]:
        return {
            "start_s": round(self.start_s, 1),
            "end_s": round(self.end_s, 1),
            "genre": self.genre,
        }


@dataclass(frozen=True)
class StreamSummary:
    """A stream's timeline in a few numbers.

    Attributes:
        duration_s: Seconds of stream time from the first segment's start to the last one's end.
        windows: Updates (one per hop) the timeline holds.
        genres: Every label's share, largest first (speech and silence included).
        passages: The last :data:`MAX_PASSAGES` runs of one genre, in order.
        more_passages: Earlier runs left out before those.
    """

    duration_s: float
    windows: int
    genres: tuple[GenreShare, ...]
    passages: tuple[Passage, ...]
    more_passages: int = 0

    @property
    def genre(self) -> str | None:
        """The label with the largest share; ``None`` for an empty timeline."""
        return self.genres[0].genre if self.genres else None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready; seconds to 0.1 s, shares to 4 decimals."""
        return {
            "genre": self.genre,
            "duration_s": round(self.duration_s, 1),
            "windows": self.windows,
            "genres": [g.to_dict() for g in self.genres],
            "passages": [p.to_dict() for p in self.passages],
            "more_passages": self.more_passages,
        }


def summarize(segments: Sequence[Segment]) -> StreamSummary:
    """The summary of ``segments`` (in stream-time order).

    A genre's seconds are its segments' durations; a segment of one update (no duration) counts
    one hop's worth, the stream's mean seconds per update, so a short timeline still has shares.
    """
    if not segments:
        return StreamSummary(0.0, 0, (), ())
    windows = sum(s.updates for s in segments)
    duration = max(0.0, segments[-1].end_s - segments[0].start_s)
    per_update = duration / max(1, windows - 1) if windows > 1 else 1.0
    seconds: dict[str, float] = {}
    for s in segments:
        seconds[s.genre] = seconds.get(s.genre, 0.0) + (s.duration_s or per_update)
    total = sum(seconds.values()) or 1.0
    shares = sorted(
        (GenreShare(g, t, t / total) for g, t in seconds.items()),
        key=lambda g: (-g.seconds, g.genre),
    )
    passages: list[Passage] = []
    for s in segments:
        if passages and passages[-1].genre == s.genre:
            passages[-1] = Passage(passages[-1].start_s, s.end_s, s.genre)
        else:
            passages.append(Passage(s.start_s, s.end_s, s.genre))
    kept = passages[-MAX_PASSAGES:]
    return StreamSummary(duration, windows, tuple(shares), tuple(kept), len(passages) - len(kept))
