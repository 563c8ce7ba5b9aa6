"""The genre timeline of a stream: contiguous segments of one genre each.

All times are seconds of stream time (audio seconds since the start of the stream). A
:class:`TimelineBuilder` consumes one ``(stream_time_s, genre, confidence)`` update per hop --
the current genre as decided by :class:`stream_server.smoothing.GenreTracker` -- and maintains
the segments; :func:`segments_to_csv` exports them.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["CSV_FIELDS", "Segment", "TimelineBuilder", "segments_to_csv"]

#: Column order of :meth:`Segment.to_dict` and :func:`segments_to_csv`.
CSV_FIELDS: tuple[str, ...] = ("start_s", "end_s", "genre", "confidence", "updates")

_DECIMALS = 3


@dataclass
class Segment:
    """A stretch of stream time attributed to one genre.

    Attributes:
        start_s: Start, in seconds of stream time.
        end_s: End (stream time of the segment's last update), in seconds; ``>= start_s``.
        genre: Genre label name.
        confidence: Mean of the per-update confidences (``0..1``) of ``genre`` in the segment.
        updates: Number of updates the segment spans (``>= 1``).
    """

    start_s: float
    end_s: float
    genre: str
    confidence: float
    updates: int

    @property
    def duration_s(self) -> float:
        """Length of the segment, in seconds of stream time."""
        return self.end_s - self.start_s

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form; times and confidence rounded to 3 decimals."""
        return {
            "start_s": round(self.start_s, _DECIMALS),
            "end_s": round(self.end_s, _DECIMALS),
            "genre": self.genre,
            "confidence": round(self.confidence, _DECIMALS),
            "updates": self.updates,
        }


def _check_finite(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")


class TimelineBuilder:
    """Turns per-hop genre updates into contiguous segments.

    The segments cover ``[first start, last update time]`` without overlap. A segment runs from
    where the previous one ended to the stream time of its last update; the very first segment
    (and the first after :meth:`mark_gap`) starts at the ``window_start_s`` given with its first
    update -- normally the start of the analysed window -- or at that update's own time when none
    is given. A new segment starts whenever the genre differs from the open segment's genre.
    """

    def __init__(self) -> None:
        """Create an empty builder."""
        self._closed: list[Segment] = []
        self._open: Segment | None = None
        self._open_confidence_sum = 0.0
        # Stream time (s) of the last gap: no later update may precede it, and the segment
        # opened after it does not start before it.
        self._floor_s: float | None = None

    @property
    def open_segment(self) -> Segment | None:
        """A copy of the segment still growing, or ``None``."""
        return None if self._open is None else dataclasses.replace(self._open)

    def segments(self) -> list[Segment]:
        """Copies of all segments, closed ones first then the open one, in stream-time order."""
        out = [dataclasses.replace(s) for s in self._closed]
        if self._open is not None:
            out.append(dataclasses.replace(self._open))
        return out

    def add(
        self,
        stream_time_s: float,
        genre: str,
        confidence: float,
        *,
        window_start_s: float | None = None,
    ) -> Segment | None:
        """Record one update: at ``stream_time_s`` seconds, ``genre`` is current with
        ``confidence`` (``0..1``).

        ``window_start_s`` (seconds of stream time, ``<= stream_time_s``) is used only when the
        update opens a fresh timeline: the very first update, or the first after
        :meth:`mark_gap`. A fresh segment never starts before the previous segment's end or the
        gap time.

        Returns:
            A copy of the segment this update closed (the genre changed), else ``None``.

        Raises:
            ValueError: non-finite values, ``window_start_s > stream_time_s``, or stream time
                earlier than the previous update or gap.
        """
        _check_finite("stream_time_s", stream_time_s)
        _check_finite("confidence", confidence)
        if window_start_s is not None:
            _check_finite("window_start_s", window_start_s)
            if window_start_s > stream_time_s:
                raise ValueError(
                    f"window_start_s ({window_start_s!r}) is after stream_time_s "
                    f"({stream_time_s!r})"
                )
        last_s = self._open.end_s if self._open is not None else self._floor_s
        if last_s is not None and stream_time_s < last_s:
            raise ValueError(
                f"stream_time_s went backwards: {stream_time_s!r} s after {last_s!r} s"
            )

        if self._open is not None and self._open.genre == genre:
            self._open.end_s = float(stream_time_s)
            self._open.updates += 1
            self._open_confidence_sum += confidence
            self._open.confidence = self._open_confidence_sum / self._open.updates
            return None

        closed = self._close()
        if closed is not None:
            start_s = closed.end_s
        else:
            start_s = float(stream_time_s if window_start_s is None else window_start_s)
            if self._floor_s is not None:
                start_s = max(start_s, self._floor_s)
        self._open = Segment(float(start_s), float(stream_time_s), genre, float(confidence), 1)
        self._open_confidence_sum = float(confidence)
        return closed

    def mark_gap(self, stream_time_s: float) -> Segment | None:
        """Close the open segment because the audio stopped (and will resume later).

        Args:
            stream_time_s: Stream time of the gap, in seconds; not earlier than the last update.
                The next segment does not start before it.

        Returns:
            A copy of the segment closed, or ``None`` when none was open.

        Raises:
            ValueError: ``stream_time_s`` not finite or earlier than the last update.
        """
        _check_finite("stream_time_s", stream_time_s)
        last_s = self._open.end_s if self._open is not None else self._floor_s
        if last_s is not None and stream_time_s < last_s:
            raise ValueError(
                f"gap at {stream_time_s!r} s is before the last update at {last_s!r} s"
            )
        closed = self._close()
        self._floor_s = float(stream_time_s)
        return closed

    def _close(self) -> Segment | None:
        """Move the open segment (if any) to the closed list; return a copy of it."""
        if self._open is None:
            return None
        closed = self._open
        self._closed.append(closed)
        self._open = None
        self._open_confidence_sum = 0.0
        return dataclasses.replace(closed)


def segments_to_csv(segments: Sequence[Segment]) -> str:
    """Render segments as CSV text with header ``start_s,end_s,genre,confidence,updates``.

    Values are rounded as in :meth:`Segment.to_dict`; lines end with ``\\n``.
    """
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for segment in segments:
        writer.writerow(segment.to_dict())
    return buf.getvalue()
