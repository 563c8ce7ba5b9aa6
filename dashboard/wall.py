"""The wall: every stream in one compact, sortable and filterable table (pure).

A :class:`WallRow` joins what ``GET /streams`` says of a stream (its state, lag, last error,
summary) with what the live updates said (:class:`~dashboard.state.StreamView`: the current genre,
the recent timeline). :func:`wall_html` draws the rows as one HTML table, a coloured genre chip and
a sparkline of the last minutes in each row, so 200 streams are one string, not 200 widgets.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dashboard.state import StreamView, format_age
from dashboard.svg import chip, sparkline_svg
from stream_server.core.records import FINAL_STATES
from stream_server.tools.client import stream_failure

__all__ = [
    "SORTS",
    "WallRow",
    "default_selection",
    "filter_rows",
    "sort_rows",
    "wall_html",
    "wall_rows",
]

#: Sort orders of the wall, by name shown to the user.
SORTS = ("newest", "name", "state", "genre", "confidence", "lag")
#: Seconds of stream time a sparkline shows.
SPARK_S = 300.0


@dataclass(frozen=True)
class WallRow:
    """One stream on the wall.

    Attributes:
        stream_id: The server's id.
        name: Display name (the id when it has none).
        kind: ``ws``, ``url``, ``webrtc``.
        state: ``connecting``, ``live``, ``reconnecting``, ``ended``, ``failed``, ``lost``.
        genre: The current genre (live) or the last one (ended); ``None`` before the first window.
        confidence: Its probability, ``0..1``, or ``None``.
        main_genre: The label with the largest share of the stream so far, or ``None``.
        main_share: That share, ``0..1``.
        audio_s: Seconds of audio the stream has had.
        lag_s: Seconds the latest update trails the audio received (live streams), or ``None``.
        created_at: Unix seconds the stream began.
        error: Why it failed, or the latest connection error of a pulled source; "" if none.
        passages: ``(start_s, end_s, genre)`` of its timeline, for the sparkline.
    """

    stream_id: str
    name: str
    kind: str
    state: str
    genre: str | None
    confidence: float | None
    main_genre: str | None
    main_share: float
    audio_s: float
    lag_s: float | None
    created_at: float
    error: str
    passages: tuple[tuple[float, float, str], ...]

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES


def _float(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _error(stream: Mapping[str, Any], state: str, now: float) -> str:
    """Why a stream failed or was lost (its ``reason``, the whole of it); for one still going,
    its latest connection error and how long ago it was."""
    if state in ("failed", "lost") and stream.get("reason"):
        return stream_failure(stream)
    last = stream.get("last_error")
    if not last:
        return ""
    at = _float(stream.get("last_error_at"))
    if at is not None and state not in FINAL_STATES:
        return f"{last} ({format_age(now - at)} ago)"
    return str(last)


def wall_rows(
    streams: Sequence[Mapping[str, Any]], views: Mapping[str, StreamView], now: float = 0.0
) -> list[WallRow]:
    """A row per stream of ``GET /streams``; the live view, when there is one, has the
    newest genre and timeline. ``now``: unix seconds, for the age of a last error."""
    rows = []
    for s in streams:
        sid = str(s.get("stream_id", ""))
        if not sid:
            continue
        view = views.get(sid)
        raw_summary = s.get("summary")
        summary: Mapping[str, Any] = raw_summary if isinstance(raw_summary, dict) else {}
        shares = summary.get("genres") or []
        state = str(s.get("state", "?"))
        genre = (view.genre if view else None) or s.get("genre")
        confidence = view.confidence if view and view.genre else _float(s.get("confidence"))
        if view and view.segments():
            passages = tuple((g.start_s, g.end_s, g.genre) for g in view.segments())
        else:
            passages = tuple(
                (float(p["start_s"]), float(p["end_s"]), str(p["genre"]))
                for p in summary.get("passages") or []
                if isinstance(p, dict)
            )
        audio = _float(s.get("stream_time_s")) or _float(summary.get("duration_s")) or 0.0
        if view:
            audio = max(audio, view.stream_time_s)
        error = _error(s, state, now)
        rows.append(
            WallRow(
                stream_id=sid,
                name=str(s.get("name") or sid),
                kind=str(s.get("kind", "")),
                state=state,
                genre=str(genre) if genre else None,
                confidence=confidence,
                main_genre=str(shares[0]["genre"]) if shares else None,
                main_share=float(shares[0]["share"]) if shares else 0.0,
                audio_s=audio,
                lag_s=_float(s.get("lag_s")),
                created_at=_float(s.get("created_at")) or 0.0,
                error=str(error),
                passages=passages,
            )
        )
    return rows


def filter_rows(rows: Sequence[WallRow], text: str, *, show_ended: bool = True) -> list[WallRow]:
    """Rows whose name, id, state, genre or error contains ``text`` (any case); ended, failed
    and lost streams only with ``show_ended``."""
    needle = text.strip().casefold()
    out = []
    for row in rows:
        if row.final and not show_ended:
            continue
        hay = " ".join(
            (row.name, row.stream_id, row.state, row.genre or "", row.main_genre or "", row.error)
        )
        if needle in hay.casefold():
            out.append(row)
    return out


def sort_rows(rows: Sequence[WallRow], order: str) -> list[WallRow]:
    """``rows`` in one of the :data:`SORTS` orders; live streams first in every order."""
    keys: dict[str, Callable[[WallRow], Any]] = {
        "newest": lambda r: -r.created_at,
        "name": lambda r: r.name.casefold(),
        "state": lambda r: r.state,
        "genre": lambda r: r.genre or "~",
        "confidence": lambda r: -(r.confidence or 0.0),
        "lag": lambda r: -(r.lag_s or 0.0),
    }
    key = keys.get(order, keys["newest"])
    return sorted(rows, key=lambda r: (r.final, key(r)))


def default_selection(rows: Sequence[WallRow]) -> str | None:
    """The newest live stream; else the newest stream; ``None`` when there is none."""
    if not rows:
        return None
    live = [r for r in rows if not r.final]
    return max(live or rows, key=lambda r: r.created_at).stream_id


def _genre_cell(row: WallRow, colours: Mapping[str, str]) -> str:
    if row.final:
        if row.main_genre is None:
            return '<span class="muted">-</span>'
        return f"{chip(row.main_genre, colours)} <span class='muted'>{row.main_share:.0%}</span>"
    if row.genre is None:
        return '<span class="muted">waiting…</span>'
    conf = "" if row.confidence is None else f" {row.confidence:.0%}"
    return f"{chip(row.genre, colours)}<span class='conf'>{conf}</span>"


def wall_html(
    rows: Sequence[WallRow],
    colours: Mapping[str, str],
    *,
    selected: str | None = None,
    limit: int = 250,
) -> str:
    """The wall as one ``<table id="wall">``; ``limit`` rows at most (a note counts the rest).
    Live streams show their current genre, ended ones their main genre and its share."""
    head = ("stream", "state", "genre", f"last {SPARK_S / 60:.0f} min", "audio", "lag", "error")
    body = []
    for row in rows[:limit]:
        sid = html.escape(row.stream_id)
        lag = "-" if row.lag_s is None else f"{row.lag_s:.1f} s"
        end = max((p[1] for p in row.passages), default=0.0)
        start = min((p[0] for p in row.passages), default=0.0)
        # a young stream fills the strip; an old one shows its last SPARK_S seconds
        span = min(SPARK_S, max(end - start, 60.0))
        spark = sparkline_svg(row.passages, colours, end_s=end, span_s=span)
        error = html.escape(row.error)
        cells = (
            f'<b>{html.escape(row.name)}</b> <span class="muted">{html.escape(row.kind)}</span>',
            f'<span class="state state-{html.escape(row.state)}">{html.escape(row.state)}</span>',
            _genre_cell(row, colours),
            spark,
            format_age(row.audio_s),
            lag,
            f'<span class="error" title="{error}">{error}</span>' if error else "",
        )
        mark = ' class="selected"' if row.stream_id == selected else ""
        body.append(
            f'<tr data-stream-id="{sid}" data-state="{html.escape(row.state)}" '
            f'data-genre="{html.escape(row.genre or "")}"{mark}>'
            + "".join(f"<td>{c}</td>" for c in cells)
            + "</tr>"
        )
    more = len(rows) - limit
    note = f'<p class="muted">{more} more: filter to narrow.</p>' if more > 0 else ""
    heads = "".join(f"<th>{h}</th>" for h in head)
    return (
        f'<div class="wall"><table id="wall"><thead><tr>{heads}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>{note}"
    )
