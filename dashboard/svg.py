"""The dashboard's pictures as HTML and SVG strings (pure: data in, markup out).

Every picture takes its colours from one ``colours`` mapping, label to ``#rrggbb``
(:func:`stream_server.core.palette.label_colours`, served in ``/ready``), so a genre has the same
colour in the wall, the timeline, the probability charts and the bars. Each coloured shape
carries ``data-genre`` and its colour in ``fill`` (or ``background``) so tests and scripts read
them from the DOM. Times are seconds of stream time; sizes are CSS pixels. SVGs scale to the
width of their container (``viewBox``) and say what they show in ``<title>`` tooltips.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from stream_server.core.palette import chip_html as chip
from stream_server.core.palette import colour_of
from stream_server.core.timeline import Segment

__all__ = [
    "CHART_CSS",
    "axis_ticks",
    "bars_html",
    "chip",
    "format_clock",
    "heat_strip_html",
    "legend_html",
    "sparkline_svg",
    "stacked_area_html",
    "timeline_html",
]

#: Tick steps an axis may use, in seconds.
_STEPS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 43200, 86400)
#: CSS for the pictures, once per page.
CHART_CSS = """
.gc-chart {margin:.2em 0;}
.gc-row {display:flex; align-items:center;}
.gc-label {width:5.5em; flex:none; font-size:.75em; color:#555; text-align:right;
           padding-right:.5em;}
.gc-row.heat .gc-label {font-size:.62em; line-height:1;}
.gc-row svg {display:block;}
.gc-plot {flex:1; position:relative; min-width:0; margin-right:1.2em;}
.bar-area {position:relative; height:34px; background:#f4f4f4;}
.bar-area .segment {position:absolute; top:0; bottom:0;}
.bar-area .change {position:absolute; top:-4px; bottom:-2px; border-left:2px dashed #222;}
.flags {position:relative; height:1.3em;}
.flags .flag {position:absolute; font-size:.72em; white-space:nowrap; color:#333;}
.axis {position:relative; height:1.2em; border-top:1px solid #999;}
.axis .tick {position:absolute; transform:translateX(-50%); font-size:.7em; color:#555;}
.axis-title {font-size:.7em; color:#555; text-align:right;}
"""

FloatArray = npt.NDArray[np.floating]


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def legend_html(labels: Sequence[str], colours: Mapping[str, str]) -> str:
    """One chip per label, in the given order: a legend beside a picture, never over it."""
    chips = " ".join(chip(label, colours) for label in dict.fromkeys(labels))
    return f'<div class="legend">{chips}</div>'


def format_clock(seconds: float) -> str:
    """Stream time as ``1:02:03``, ``2:05`` or ``42 s``."""
    s = round(seconds)
    if abs(s) >= 3600:
        return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
    if abs(s) >= 60:
        return f"{s // 60}:{s % 60:02d}"
    return f"{s} s"


def axis_ticks(t0: float, t1: float, most: int = 8) -> list[float]:
    """Round tick positions (seconds) inside ``[t0, t1]``, at most ``most`` of them."""
    span = max(t1 - t0, 1e-9)
    step = next((s for s in _STEPS_S if span / s <= most), _STEPS_S[-1])
    first = math.ceil(t0 / step) * step
    return [float(t) for t in np.arange(first, t1 + 1e-9, step)]


def _pct(t: float, t0: float, t1: float) -> float:
    """Stream time ``t`` as a percentage of the span ``[t0, t1]``."""
    return (t - t0) / max(t1 - t0, 1e-9) * 100.0


def _axis_html(t0: float, t1: float) -> str:
    ticks = "".join(
        f'<span class="tick" style="left:{_pct(t, t0, t1):.2f}%">{_esc(format_clock(t))}</span>'
        for t in axis_ticks(t0, t1)
    )
    return (
        f'<div class="axis">{ticks}</div>'
        '<div class="axis-title">stream time (seconds of audio)</div>'
    )


def _row(label: str, body: str, cls: str = "") -> str:
    """A chart row: its label in the left margin, ``body`` across the rest."""
    return (
        f'<div class="gc-row {cls}"><div class="gc-label">{_esc(label)}</div>'
        f'<div class="gc-plot">{body}</div></div>'
    )


def timeline_html(
    segments: Sequence[Segment],
    colours: Mapping[str, str],
    *,
    t0: float | None = None,
    t1: float | None = None,
    changes: Sequence[tuple[float, str]] = (),
    titles: Sequence[tuple[float, str]] = (),
    element_id: str = "timeline-chart",
) -> str:
    """The genre timeline: a coloured bar per segment over ``[t0, t1]`` (default: the
    segments' span), confirmed changes ``(stream_time_s, genre)`` as dashed lines, track titles
    ``(stream_time_s, title)`` as flags above, and a time axis below. HTML positioned in
    percent of the width, so it fits any column and its text stays sharp."""
    if not segments:
        return f'<div id="{element_id}" class="gc-chart" data-segments="0"></div>'
    lo = segments[0].start_s if t0 is None else t0
    hi = max(segments[-1].end_s, lo + 1.0) if t1 is None else t1
    parts: list[str] = []
    for s in segments:
        a, b = max(s.start_s, lo), min(max(s.end_s, s.start_s + 0.5), hi)
        if b <= a:
            continue
        fill = colour_of(s.genre, colours)
        tip = f"{s.genre} {s.confidence:.0%} · {format_clock(s.start_s)}-{format_clock(s.end_s)}"
        left, right = _pct(a, lo, hi), _pct(b, lo, hi)
        parts.append(
            f'<div class="segment" data-genre="{_esc(s.genre)}" data-colour="{fill}" '
            f'style="left:{left:.2f}%;width:{right - left:.2f}%;background:{fill}" '
            f'title="{_esc(tip)}"></div>'
        )
    for t, genre in changes:
        if lo <= t <= hi:
            parts.append(
                f'<div class="change" style="left:{_pct(t, lo, hi):.2f}%" '
                f'title="{_esc(f"{format_clock(t)}: now {genre}")}"></div>'
            )
    flags = "".join(
        f'<span class="flag" style="left:{_pct(t, lo, hi):.2f}%" title="{_esc(title)}">'
        f"⚑ {_esc(title if len(title) <= 40 else title[:39] + '…')}</span>"
        for t, title in titles
        if lo <= t <= hi
    )
    body = (
        (_row("", f'<div class="flags">{flags}</div>') if flags else "")
        + _row("genre", f'<div class="bar-area">{"".join(parts)}</div>')
        + _row("", _axis_html(lo, hi))
    )
    return f'<div id="{element_id}" class="gc-chart" data-segments="{len(segments)}">{body}</div>'


def stacked_area_html(
    times: FloatArray,
    labels: Sequence[str],
    probs: FloatArray,
    colours: Mapping[str, str],
    *,
    t0: float,
    t1: float,
    height: int = 64,
    element_id: str = "smoothed-chart",
) -> str:
    """Smoothed probabilities over time as stacked areas, one per label (in ``labels``' order):
    ``times`` ``(n,)`` seconds, ``probs`` ``(n, len(labels))`` in ``0..1``; ``height`` pixels."""
    polygons: list[str] = []
    if len(times) >= 1:
        xs = [_pct(float(t), t0, t1) for t in times]
        if len(xs) == 1:
            xs = [xs[0] - 0.5, xs[0] + 0.5]
            probs = np.repeat(probs, 2, axis=0)
        base = np.zeros(len(xs))
        for j, label in enumerate(labels):
            top = base + np.nan_to_num(probs[:, j])
            if np.any(top > base):
                upper = [f"{x:.2f},{100 * (1 - y):.2f}" for x, y in zip(xs, top, strict=True)]
                lower = [
                    f"{x:.2f},{100 * (1 - y):.2f}"
                    for x, y in zip(reversed(xs), base[::-1], strict=True)
                ]
                mean = float(np.nanmean(probs[:, j]))
                polygons.append(
                    f'<polygon class="area" data-genre="{_esc(label)}" '
                    f'points="{" ".join(upper + lower)}" fill="{colour_of(label, colours)}">'
                    f"<title>{_esc(label)}: mean {mean:.0%}</title></polygon>"
                )
            base = top
    svg = (
        f'<svg viewBox="0 0 100 100" preserveAspectRatio="none" width="100%" '
        f'height="{height}" xmlns="http://www.w3.org/2000/svg">{"".join(polygons)}</svg>'
    )
    return (
        f'<div id="{element_id}" class="gc-chart" data-points="{len(times)}">'
        f"{_row('smoothed', svg)}</div>"
    )


def heat_strip_html(
    times: FloatArray,
    labels: Sequence[str],
    probs: FloatArray,
    colours: Mapping[str, str],
    *,
    t0: float,
    t1: float,
    hop_s: float = 1.0,
    row_px: int = 10,
    element_id: str = "raw-chart",
) -> str:
    """Each window's own (raw) probabilities: a row per label, a cell per window in the label's
    colour, the more opaque the likelier (opacity ``sqrt(p)``). ``probs``
    ``(n, len(labels))``, NaN where the window did not report the label (outside its top-k),
    left empty."""
    rows: list[str] = []
    cell_w = max(_pct(t0 + hop_s, t0, t1) - _pct(t0, t0, t1), 0.2)
    for j, label in enumerate(labels):
        fill = colour_of(label, colours)
        cells = "".join(
            f'<rect data-genre="{_esc(label)}" x="{_pct(float(t), t0, t1) - cell_w:.2f}" y="0" '
            f'width="{cell_w:.2f}" height="1" fill="{fill}" '
            f'fill-opacity="{math.sqrt(float(p)):.2f}"/>'
            for t, p in zip(times, probs[:, j], strict=True)
            if math.isfinite(float(p)) and p >= 0.01
        )
        svg = (
            f'<svg viewBox="0 0 100 1" preserveAspectRatio="none" width="100%" '
            f'height="{row_px}" xmlns="http://www.w3.org/2000/svg">{cells}</svg>'
        )
        rows.append(_row(label, svg, "heat"))
    return (
        f'<div id="{element_id}" class="gc-chart" data-points="{len(times)}">{"".join(rows)}</div>'
    )


def bars_html(
    probabilities: Mapping[str, float], colours: Mapping[str, str], element_id: str = "bars"
) -> str:
    """Horizontal bars of label to probability (``0..1``), best first, each in its colour."""
    rows = []
    for label in sorted(probabilities, key=lambda k: -probabilities[k]):
        p = max(0.0, min(1.0, float(probabilities[label])))
        fill = colour_of(label, colours)
        rows.append(
            f'<div class="bar-row"><span class="bar-label">{_esc(label)}</span>'
            f'<span class="bar-track"><span class="bar" data-genre="{_esc(label)}" '
            f'style="width:{p * 100:.1f}%;background:{fill}"></span></span>'
            f'<span class="bar-value">{p:.0%}</span></div>'
        )
    return f'<div id="{element_id}" class="bars">{"".join(rows)}</div>'


def sparkline_svg(
    passages: Sequence[tuple[float, float, str]],
    colours: Mapping[str, str],
    *,
    end_s: float,
    span_s: float = 300.0,
    width: int = 160,
    height: int = 14,
) -> str:
    """The last ``span_s`` seconds before ``end_s`` as a thin strip of genre colours;
    ``passages``: ``(start_s, end_s, genre)`` in order."""
    lo = end_s - span_s
    parts = [f'<rect x="0" y="0" width="{width}" height="{height}" fill="#eee"/>']
    for a, b, genre in passages:
        a, b = max(a, lo), min(max(b, a + 1.0), end_s)
        if b <= a:
            continue
        x = (a - lo) / span_s * width
        w = max((b - a) / span_s * width, 1.0)
        parts.append(
            f'<rect data-genre="{_esc(genre)}" x="{x:.1f}" y="0" width="{w:.1f}" '
            f'height="{height}" fill="{colour_of(genre, colours)}"/>'
        )
    return (
        f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'xmlns="http://www.w3.org/2000/svg">{"".join(parts)}</svg>'
    )
