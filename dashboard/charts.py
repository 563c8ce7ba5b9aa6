"""Altair charts for the dashboard (pure: data in, Vega-Lite chart specs out)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import altair as alt

from dashboard.state import ChangeEntry
from stream_server.core.timeline import Segment
from stream_server.messages import NON_MUSIC_LABELS

#: The colour of speech and silence: one neutral grey, unlike any genre's.
NEUTRAL = "#9e9e9e"
#: Genre colours (Tableau 10 with its grey swapped for cyan), given out in label order.
GENRE_COLOURS = (
    "#4e79a7",
    "#f28e2b",
    "#e15759",
    "#76b7b2",
    "#59a14f",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#17becf",
)


def colour_scale(labels: Iterable[str]) -> alt.Scale:
    """A colour for each label: genres take :data:`GENRE_COLOURS` in sorted order, speech and
    silence :data:`NEUTRAL`. Give every label a chart may show so colours agree across charts."""
    domain = sorted(set(labels))
    genres = [label for label in domain if label not in NON_MUSIC_LABELS]
    colour = {g: GENRE_COLOURS[i % len(GENRE_COLOURS)] for i, g in enumerate(genres)}
    return alt.Scale(domain=domain, range=[colour.get(label, NEUTRAL) for label in domain])


def _data(rows: list[dict[str, Any]]) -> alt.Data:
    return alt.Data(values=rows)  # type: ignore[no-untyped-call]


def timeline_chart(
    segments: Sequence[Segment],
    changes: Sequence[ChangeEntry] = (),
    titles: Sequence[tuple[float, str]] = (),
    *,
    height: int = 140,
    labels: Iterable[str] = (),
) -> alt.LayerChart:
    """Coloured genre segments over stream time (seconds), speech and silence in neutral grey,
    changes as dashed rules, titles as text; ``height`` in pixels; ``labels``: every label the
    other charts may show (see :func:`colour_scale`)."""
    rows = [
        {
            "start_s": round(s.start_s, 2),
            "end_s": round(s.end_s, 2),
            "genre": s.genre,
            "confidence": round(s.confidence, 3),
            "updates": s.updates,
        }
        for s in segments
    ]
    bars = (
        alt.Chart(_data(rows))
        .mark_bar(cornerRadius=2)
        .encode(
            x=alt.X(
                "start_s:Q",
                title="stream time (s)",
                scale=alt.Scale(zero=False, nice=False),
                axis=alt.Axis(orient="bottom"),
            ),
            x2="end_s:Q",
            y=alt.value(height * 0.35),
            y2=alt.value(height * 0.85),
            color=alt.Color(
                "genre:N",
                scale=colour_scale([*labels, *(s.genre for s in segments)]),
                legend=alt.Legend(orient="bottom", title=None),
            ),
            tooltip=["genre:N", "confidence:Q", "start_s:Q", "end_s:Q", "updates:Q"],
        )
    )
    layers: list[alt.Chart] = [bars]
    if changes:
        ch = [
            {"t": c.stream_time_s, "genre": c.genre, "previous": c.previous or "start"}
            for c in changes
        ]
        layers.append(
            alt.Chart(_data(ch))
            .mark_rule(color="#333", strokeDash=[4, 3], strokeWidth=2)
            .encode(
                x="t:Q",
                y=alt.value(height * 0.1),
                y2=alt.value(height * 0.85),
                tooltip=["t:Q", "previous:N", "genre:N"],
            )
        )
    if titles:
        ti = [{"t": t, "title": title} for t, title in titles]
        layers.append(
            alt.Chart(_data(ti))
            .mark_text(align="left", dx=4, fontSize=11, color="#444")
            .encode(x="t:Q", y=alt.value(height * 0.25), text="title:N")
        )
    return alt.LayerChart(layer=layers, height=height)


def probability_chart(
    probabilities: dict[str, float], *, bar_px: int = 24, labels: Iterable[str] = ()
) -> alt.Chart:
    """Horizontal bars of label to probability (``0..1``), best first; ``bar_px`` pixels a bar;
    ``labels`` as for :func:`timeline_chart`."""
    order = sorted(probabilities, key=lambda k: -probabilities[k])
    rows = [{"genre": k, "probability": round(probabilities[k], 4)} for k in order]
    chart: alt.Chart = (
        alt.Chart(_data(rows))
        .mark_bar()
        .encode(
            x=alt.X("probability:Q", scale=alt.Scale(domain=[0, 1])),
            y=alt.Y("genre:N", sort=order, title=None, axis=alt.Axis(labelOverlap=False)),
            color=alt.Color("genre:N", scale=colour_scale([*labels, *probabilities]), legend=None),
            tooltip=["genre:N", "probability:Q"],
        )
        .properties(height=alt.Step(bar_px))
    )
    return chart
