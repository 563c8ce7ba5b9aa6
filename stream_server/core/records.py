"""What the archive keeps of a stream, and the archive's interface: a stream's record, how it
ended and what it was (:class:`StreamOutcome`), the titles it announced, a timeline tail to
write, and :class:`StreamArchive`, which both the one-machine SQLite store
(:class:`~stream_server.serve.store.TimelineStore`) and a cluster's key-value buckets
(:class:`~stream_server.cluster.store.ClusterStore`) implement.

Times: ``created_at`` / ``ended_at``, a title's ``wall_time`` and an outcome's
``last_error_at`` are wall-clock unix seconds; segment times, a title's ``stream_time_s`` and an
outcome's ``stream_time_s`` are seconds of stream time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from stream_server.core.summary import summarize
from stream_server.core.timeline import Segment

__all__ = [
    "FINAL_STATES",
    "StreamArchive",
    "StreamOutcome",
    "StreamRecord",
    "Tail",
    "TrackTitle",
]

#: States of a listed stream (``GET /streams``) it never leaves: it ended, its source failed, or
#: (in a cluster) the node that ran it died without ending it. Every other state is a live one.
FINAL_STATES: frozenset[str] = frozenset({"ended", "failed", "lost"})


@dataclass(frozen=True)
class StreamOutcome:
    """How a stream ended and what it was, kept with its record when it ends, so that a listing
    of ended streams reads no timeline. ``None`` where not known (a stream a previous run left
    open, whose outcome was read back from its timeline).

    Attributes:
        state: ``"ended"``, or ``"failed"`` (a pulled source that gave up).
        reason: Why it ended, e.g. ``"stopped by request"``, ``"HTTP 404 Not Found from ..."``.
        summary: :meth:`~stream_server.core.summary.StreamSummary.to_dict` of its whole
            timeline: main genre, shares, passages.
        stream_time_s: Seconds of stream time at its end.
        windows_computed: Windows the model scored.
        windows_skipped: Windows due but dropped before inference.
        genre: The last genre it was labelled with.
        confidence: That label's last confidence (``0..1``).
        title: The last title it announced.
        dropped: Pulled audio chunks dropped (the event loop behind).
        corrupt_packets: Pulled packets the decoder rejected.
        reconnects: Reconnects of a pulled source.
        last_error: The latest connection error of a pulled source, if any.
        last_error_at: When it happened, wall-clock unix seconds.
    """

    state: str
    reason: str | None
    summary: Mapping[str, Any] = field(default_factory=dict)
    stream_time_s: float | None = None
    windows_computed: int | None = None
    windows_skipped: int | None = None
    genre: str | None = None
    confidence: float | None = None
    title: str | None = None
    dropped: int = 0
    corrupt_packets: int = 0
    reconnects: int = 0
    last_error: str | None = None
    last_error_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every attribute by name (``GET /streams`` lists these)."""
        return dataclasses.asdict(self)

    @classmethod
    def of_timeline(cls, segments: Sequence[Segment], reason: str | None = None) -> StreamOutcome:
        """The outcome of a stream that ended without one, from its stored timeline: its
        summary, its stream time (the last segment's end), its last genre; ``reason`` where
        known; its counts are not known."""
        last = segments[-1] if segments else None
        return cls(
            state="ended",
            reason=reason,
            summary=summarize(segments).to_dict(),
            stream_time_s=None if last is None else round(last.end_s, 3),
            genre=None if last is None else last.genre,
            confidence=None if last is None else round(last.confidence, 4),
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StreamOutcome:
        """The outcome :meth:`to_dict` wrote; keys this version does not know are ignored.

        Raises:
            ValueError: ``data`` has no ``state``.
        """
        if "state" not in data:
            raise ValueError("a stream outcome needs a 'state'")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


#: A timeline tail to store: ``(stream_id, first segment index, segments from there on)``.
Tail = tuple[str, int, Sequence[Segment]]


@dataclass(frozen=True)
class StreamRecord:
    """One stream the server has ingested.

    Attributes:
        stream_id: Unique id of the stream.
        name: Human-readable name.
        kind: How the audio arrives (e.g. ``"ws"``, ``"file"``, ``"url"``).
        source: Where it comes from (client address, file path or URL).
        created_at: When the stream started, wall-clock unix seconds.
        ended_at: When it ended, wall-clock unix seconds; ``None`` while live.
        sample_rate: Announced sample rate in Hz, if known.
        channels: Announced channel count, if known.
        fmt: Announced sample format (e.g. ``"s16le"``), if known.
        outcome: How it ended and what it was; ``None`` while live (and for a stream ended
            before outcomes were kept, or ended by a process that could not tell).
    """

    stream_id: str
    name: str
    kind: str
    source: str
    created_at: float
    ended_at: float | None = None
    sample_rate: int | None = None
    channels: int | None = None
    fmt: str | None = None
    outcome: StreamOutcome | None = None


@dataclass(frozen=True)
class TrackTitle:
    """A title a stream announced (a track change).

    Attributes:
        stream_time_s: When, in seconds of stream time.
        wall_time: When, wall-clock unix seconds.
        title: The announced title, e.g. ``"Artist - Song"``.
    """

    stream_time_s: float
    wall_time: float
    title: str

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form; ``stream_time_s`` rounded to 3 decimals."""
        return {
            "stream_time_s": round(self.stream_time_s, 3),
            "wall_time": self.wall_time,
            "title": self.title,
        }


class StreamArchive(Protocol):
    """Streams, their timelines and titles, kept beyond the process. The service calls these
    from its one database thread (they may block it, never the event loop); each raises
    :class:`~stream_server.errors.StorageError` when the archive cannot do it."""

    def add_stream(self, record: StreamRecord) -> None:
        """Keep a new stream (an existing id is an error)."""

    def end_open_streams(self, ended_at: float) -> int:
        """End the streams a previous run of this server left open; how many."""

    def end_stream(
        self, stream_id: str, ended_at: float, outcome: StreamOutcome | None = None
    ) -> None:
        """Mark a stream ended at ``ended_at``, keeping ``outcome`` with it (``None``: the
        outcome it has, if any, stays)."""

    def get_stream(self, stream_id: str) -> StreamRecord | None:
        """The stream with this id, or ``None``."""

    def list_streams(self, limit: int = 100) -> list[StreamRecord]:
        """Up to ``limit`` streams, newest first."""

    def write_tail(self, stream_id: str, index: int, segments: Sequence[Segment]) -> None:
        """Make ``segments`` the stream's timeline from segment number ``index`` on."""

    def write_tails(self, tails: Sequence[Tail]) -> list[tuple[str, str]]:
        """:meth:`write_tail` for many streams; ``(stream_id, reason)`` of each not written."""

    def timeline(self, stream_id: str) -> list[Segment]:
        """A stream's segments in order (empty for an unknown stream)."""

    def add_title(self, stream_id: str, title: TrackTitle) -> None:
        """Keep a title the stream announced."""

    def titles(self, stream_id: str) -> list[TrackTitle]:
        """A stream's titles in the order announced."""

    def prune(self, before_wall_time: float) -> int:
        """Delete the streams that ended before ``before_wall_time``; how many."""

    def close(self) -> None:
        """Release the archive; idempotent."""
