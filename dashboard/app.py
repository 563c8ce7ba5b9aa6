"""The genrecast live dashboard (Streamlit): ``genrecast dashboard [--server URL]``.

Live parts re-render once a second inside ``st.fragment(run_every=1.0)``; updates come from one
background :class:`dashboard.feed.Feed` per server, history and actions from the REST API. Every
request is wrapped: a failure is a message on the page, never a traceback. A server that requires a
token gets ``$GENRECAST_TOKEN`` (``genrecast dashboard --token`` sets it for this process), which is
never shown on the page.
"""

from __future__ import annotations

import argparse
import html
import json
import sys
import time
from pathlib import Path
from typing import Any

import streamlit as st

from dashboard.api import Api, Reply
from dashboard.feed import Feed
from dashboard.metrics import MetricsSample, key_metrics, parse_metrics
from dashboard.state import (
    DashboardState,
    StreamView,
    format_age,
    merge_segments,
    recent,
)
from dashboard.svg import (
    CHART_CSS,
    bars_html,
    chip,
    format_clock,
    heat_strip_html,
    legend_html,
    stacked_area_html,
    timeline_html,
)
from dashboard.wall import (
    SORTS,
    WallRow,
    default_selection,
    filter_rows,
    sort_rows,
    wall_html,
    wall_rows,
)
from stream_server.core.palette import label_colours
from stream_server.core.timeline import segments_from_json, segments_to_csv
from stream_server.messages import NON_MUSIC_LABELS
from stream_server.tools.client import resolve_token

DEFAULT_SERVER = "http://127.0.0.1:8000"
TITLE = "genrecast live dashboard"
#: The page icon, shared with the server's pages.
ICON = Path(__file__).resolve().parents[1] / "stream_server" / "static" / "favicon.png"
#: Label to ``#rrggbb``.
Palette = dict[str, str]


def server_url(argv: list[str]) -> str:
    """The ``--server`` given after ``--`` on the ``streamlit run`` command line."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--server", default=DEFAULT_SERVER)
    args, _ = parser.parse_known_args(argv)
    return str(args.server).rstrip("/")


@st.cache_resource
def feed_for(server: str) -> Feed:
    """One background consumer per server URL, shared by every browser session."""
    return Feed(server).start()


def marker(element_id: str, text: str, **data: object) -> None:
    """A ``<div id=... data-...>`` that tests and scripts can wait on."""
    attrs = "".join(f' data-{k.replace("_", "-")}="{html.escape(str(v))}"' for k, v in data.items())
    st.markdown(f'<div id="{element_id}"{attrs}>{html.escape(text)}</div>', unsafe_allow_html=True)


STYLE = """
<style>
.block-container {padding-top: 2.6rem; padding-bottom: 1rem;}
.chip {display:inline-block; padding:0 .5em; border-radius:.8em; font-size:.85em; line-height:1.5em;
       white-space:nowrap;}
.legend .chip {margin:0 .2em .2em 0;}
.muted {color:#777;}
.conf {margin-left:.35em; font-variant-numeric:tabular-nums;}
.statusline {font-size:.9em; color:#444; margin:.1em 0 .4em 0;}
.statusline b {font-variant-numeric:tabular-nums;}
.wall {max-height:380px; overflow-y:auto; border:1px solid #e5e5e5; border-radius:4px;}
#wall {width:100%; border-collapse:collapse; font-size:.85em;}
#wall th {position:sticky; top:0; background:#fafafa; text-align:left; font-weight:600;}
#wall td, #wall th {padding:2px 8px; border-bottom:1px solid #f0f0f0; vertical-align:middle;}
#wall tr.selected {background:#fff8e1;}
#wall .error {color:#b00020; display:inline-block; max-width:28em; overflow:hidden;
              text-overflow:ellipsis; white-space:nowrap; vertical-align:bottom;}
.state-live {color:#1b7f3b;} .state-failed, .state-lost {color:#b00020; font-weight:600;}
.state-ended {color:#777;} .state-connecting, .state-reconnecting {color:#b26a00;}
.headline {font-size:1.5em; margin:.1em 0 .2em 0;} .headline .chip {font-size:.9em;}
.failure {background:#fdecea; color:#7a0010; border-left:4px solid #b00020; padding:.4em .7em;
          margin:.3em 0;}
.bars .bar-row {display:flex; align-items:center; gap:.4em; font-size:.8em; margin:1px 0;}
.bars .bar-label {width:6.5em; text-align:right;} .bars .bar-value {width:3em;}
.bars .bar-track {flex:1; background:#f2f2f2; height:.9em;}
.bars .bar {display:block; height:100%;}
.gc-chart {display:block;}
#changes {font-size:.85em; max-height:160px; overflow-y:auto; margin:0; padding-left:1.2em;}
</style>
"""


def show_error(where: str, reply: Reply) -> None:
    st.warning(f"{where}: {reply.error}")


@st.cache_data(ttl=10.0, show_spinner=False)
def model_facts(server: str) -> dict[str, Any]:
    """``/ready`` (labels, colours, hop, model, device), cached 10 s; ``{}`` until ready."""
    reply = Api(server).ready()
    return reply.data if reply.ok and isinstance(reply.data, dict) else {}


def palette(facts: dict[str, Any]) -> Palette:
    """The server's colours (``/ready``); before it answers, the palette of no labels. A label
    either lacks is coloured from its name where it is drawn (``colour_of``)."""
    served = facts.get("colours")
    if isinstance(served, dict):
        return {str(k): str(v) for k, v in served.items()}
    return label_colours(list(facts.get("labels") or []))


def header(api: Api, feed: Feed) -> bool:
    """Server status and key metrics on one line; returns whether the server answered."""
    health = api.health()
    if not health.ok:
        marker("server-status", "server down", state="down")
        st.error(
            f"The genrecast server at {api.base} is not reachable ({health.error}). "
            "Retrying every second…"
        )
        return False
    status = "connected" if feed.connected else feed.status
    facts = model_facts(api.base)
    model = f" · {facts.get('device', '?')}" if facts else " · model loading"
    marker("server-status", f"server up at {api.base}{model} · live updates: {status}", state="up")
    reply = api.metrics()
    if not reply.ok:
        show_error("metrics", reply)
        return True
    try:
        sample = parse_metrics(reply.data, time.time())
    except ValueError as exc:
        st.warning(f"metrics could not be read: {exc}")
        return True
    previous: MetricsSample | None = st.session_state.get("metrics_sample")
    st.session_state["metrics_sample"] = sample
    km = key_metrics(sample, previous)
    rate = "-" if km.windows_per_s is None else f"{km.windows_per_s:.1f}"
    p99 = "-" if km.p99_latency_ms is None else f"{km.p99_latency_ms:.0f} ms"
    st.markdown(
        f'<div class="statusline" id="key-metrics">live streams <b>{km.active_streams}</b> · '
        f"windows/s <b>{rate}</b> · p99 latency <b>{p99}</b> · windows computed "
        f"<b>{km.windows_computed}</b> · skipped <b>{km.windows_skipped}</b></div>",
        unsafe_allow_html=True,
    )
    return True


@st.cache_data(ttl=2.0, show_spinner=False)
def history(server: str, stream_id: str) -> dict[str, Any] | None:
    """The stored timeline (``GET /streams/{id}/timeline``), cached for 2 s; ``None`` when it
    cannot be read."""
    reply = Api(server).timeline(stream_id)
    return reply.data if reply.ok else None


def choose_stream(rows: list[WallRow]) -> str | None:
    """The stream selector; the newest live stream until the user picks one."""
    ids = [r.stream_id for r in rows]
    if not ids:
        return None
    by_id = {r.stream_id: r for r in rows}
    current = st.session_state.get("stream")
    if current not in ids or not st.session_state.get("stream_picked"):
        st.session_state["stream"] = default_selection(rows)

    def picked() -> None:
        st.session_state["stream_picked"] = True

    def name(sid: str) -> str:
        # the label stays the same while the stream plays, so an open list does not change
        # under the pointer
        return f"{by_id[sid].name} ({sid})"

    sid: str = st.selectbox("stream", ids, key="stream", format_func=name, on_change=picked)
    return sid


def _current(row: WallRow) -> str:
    """The headline's data attributes, read by tests and scripts."""
    genre = row.genre or ""
    return (
        f'id="current-genre" data-genre="{html.escape(genre)}" '
        f'data-stream-id="{html.escape(row.stream_id)}" data-state="{html.escape(row.state)}" '
        f'data-neutral="{genre in NON_MUSIC_LABELS}"'
    )


def headline(
    row: WallRow, view: StreamView | None, summary: dict[str, Any], colours: Palette
) -> None:
    """The selected stream's state in one line: the current genre (live), the summary (ended),
    the reason (failed)."""
    genre = row.genre
    if not row.final:
        if genre:
            text = (
                f'<div class="headline" {_current(row)}>{chip(genre, colours)} '
                f'<span class="conf">{(row.confidence or 0.0):.0%} (smoothed)</span> '
                f'<span class="muted">· {format_age(row.audio_s)} of audio'
                + ("" if row.lag_s is None else f" · lag {row.lag_s:.1f} s")
                + "</span></div>"
            )
        else:
            state = html.escape(row.state)
            text = (
                f'<div class="headline muted" {_current(row)}>{state}: '
                "waiting for the first window…</div>"
            )
        st.markdown(text, unsafe_allow_html=True)
    else:
        shares = summary.get("genres") or []
        main = " ".join(
            f"{chip(str(g['genre']), colours)} {float(g['share']):.0%}" for g in shares[:4]
        )
        st.markdown(
            f'<div class="headline" {_current(row)}><span id="summary">'
            f'<span class="state state-{html.escape(row.state)}">{html.escape(row.state)}</span> '
            f'<span class="muted">· {format_age(float(summary.get("duration_s") or row.audio_s))}'
            f" of audio · {int(summary.get('windows') or 0)} windows</span> {main}</div>",
            unsafe_allow_html=True,
        )
    if row.error:
        what = "failed" if row.state == "failed" else "last error"
        st.markdown(
            f'<div class="failure" id="failure" data-reason="{html.escape(row.error)}">'
            f"<b>{what}:</b> {html.escape(row.error)}</div>",
            unsafe_allow_html=True,
        )
    if view and view.title:
        marker("current-title", f"now playing: {view.title}", title=view.title)


def selected_stream(
    api: Api,
    rows: list[WallRow],
    streams: list[dict[str, Any]],
    state: DashboardState,
    facts: dict[str, Any],
) -> None:
    sid = choose_stream(rows)
    if sid is None:
        st.info("No streams yet: push one (`genrecast push FILE`) or add a radio URL on the left.")
        return
    row = next(r for r in rows if r.stream_id == sid)
    listed = next((s for s in streams if s.get("stream_id") == sid), {})
    listed_summary = listed.get("summary")
    summary: dict[str, Any] = listed_summary if isinstance(listed_summary, dict) else {}
    view = state.streams.get(sid)
    data = history(api.base, sid)
    stored = segments_from_json(data.get("segments") if data else None)
    segments = merge_segments(stored, view.segments() if view else [])
    colours = palette(facts)
    headline(row, view, summary, colours)
    left, right = st.columns([4, 1])
    with left:
        minutes = st.session_state.get("minutes", 10)
        shown = recent(segments, float(minutes))
        titles = view.titles if view else []
        if not titles and data:
            titles = [(float(t["stream_time_s"]), str(t["title"])) for t in data.get("titles", [])]
        if shown:
            t0, t1 = shown[0].start_s, max(shown[-1].end_s, shown[0].start_s + 10.0)
            labels = [g for g in facts.get("labels") or [] if g in {s.genre for s in shown}]
            labels += [s.genre for s in shown if s.genre not in labels]
            changes = [
                (c.stream_time_s, c.genre) for c in state.changes_of(sid) if c.stream_time_s >= t0
            ]
            pictures = [
                legend_html(labels, colours),
                timeline_html(
                    shown,
                    colours,
                    element_id="timeline",
                    t0=t0,
                    t1=t1,
                    changes=changes,
                    titles=[t for t in titles if t[0] >= t0],
                ),
            ]
            if view is not None and view.history.count:
                times, smoothed, raw = view.history.recent(t0)
                order = [g for g in facts.get("labels") or [] if g in view.history.labels]
                order += [g for g in view.history.labels if g not in order]
                cols = [view.history.labels.index(g) for g in order]
                hop = float(facts.get("hop_s") or 1.0)
                pictures.append(
                    stacked_area_html(times, order, smoothed[:, cols], colours, t0=t0, t1=t1)
                )
                pictures.append(
                    '<div class="muted" style="font-size:.75em">each window\'s own (raw) top '
                    "probabilities, darker = more likely</div>"
                    + heat_strip_html(times, order, raw[:, cols], colours, t0=t0, t1=t1, hop_s=hop)
                )
            st.markdown("".join(pictures), unsafe_allow_html=True)
        else:
            st.markdown(
                '<div id="timeline" data-segments="0" class="muted">no windows yet</div>',
                unsafe_allow_html=True,
            )
    with right:
        if view and view.probabilities:
            st.caption("smoothed probabilities now")
            st.markdown(bars_html(view.probabilities, colours), unsafe_allow_html=True)
        changes_here = list(reversed(state.changes_of(sid)))[:20]
        items = "".join(
            f"<li>{format_clock(c.stream_time_s)}: "
            f"{chip(c.previous, colours) if c.previous else 'start'} → "
            f"{chip(c.genre, colours)}</li>"
            for c in changes_here
        )
        st.caption("genre changes")
        st.markdown(f'<ul id="changes">{items or "<li>none yet</li>"}</ul>', unsafe_allow_html=True)
    controls = st.columns([2, 1, 1, 3])
    controls[0].slider("timeline: last minutes", 1, 60, 10, key="minutes")
    payload = data or {"stream_id": sid, "segments": [s.to_dict() for s in segments]}
    controls[1].download_button(
        "timeline CSV",
        # the stored timeline as the server's CSV has it (the same rows, rounded alike)
        segments_to_csv(stored if data else segments),
        file_name=f"{sid}-timeline.csv",
        mime="text/csv",
        on_click="ignore",
        key="csv",
    )
    controls[2].download_button(
        "timeline JSON",
        json.dumps(payload, indent=2),
        file_name=f"{sid}-timeline.json",
        mime="application/json",
        on_click="ignore",
        key="json",
    )


def wall(rows: list[WallRow], facts: dict[str, Any]) -> None:
    """Every stream: filter, sort, the table."""
    controls = st.columns([3, 2, 2, 3])
    text = controls[0].text_input(
        "filter streams", key="wall_filter", placeholder="name, genre, state…"
    )
    order = controls[1].selectbox("sort by", SORTS, key="wall_sort")
    show_ended = controls[2].checkbox("show ended", value=True, key="wall_ended")
    shown = sort_rows(filter_rows(rows, text, show_ended=show_ended), order)
    controls[3].caption(f"{len(shown)} of {len(rows)} streams")
    colours = palette(facts)
    st.markdown(
        wall_html(shown, colours, selected=st.session_state.get("stream")), unsafe_allow_html=True
    )


@st.fragment(run_every=1.0)
def live_view(server: str) -> None:
    api = Api(server)
    feed = feed_for(server)
    try:
        if not header(api, feed):
            return
        reply = api.streams()
        if not reply.ok:
            show_error("streams", reply)
            return
        state = feed.snapshot()
        facts = model_facts(server)
        rows = wall_rows(reply.data, state.streams, time.time())
        selected_stream(api, rows, reply.data, state, facts)
        st.markdown("##### every stream")
        wall(rows, facts)
    except Exception as exc:  # a page never shows a traceback
        st.error(f"The dashboard could not draw this view: {type(exc).__name__}: {exc}")


def sidebar(server: str) -> None:
    api = Api(server)
    st.sidebar.markdown(f"Server: `{api.base}` · [microphone page]({api.base}/mic)")
    if resolve_token() is not None:
        st.sidebar.caption("With a token, open the microphone page as /mic#token=YOUR_TOKEN")
    with st.sidebar.form("add-stream", clear_on_submit=True):
        st.markdown("**Add a radio URL**")
        url = st.text_input("URL (or a file in the server's media folder)", key="add_url")
        name = st.text_input("name (optional)", key="add_name")
        if st.form_submit_button("Add stream") and url.strip():
            reply = api.add_stream(url.strip(), name.strip())
            if reply.ok:
                sid = str(reply.data.get("stream_id", ""))
                st.session_state["added"] = sid
                st.session_state["stream"] = sid
            else:
                st.session_state["added"] = ""
                st.error(f"not added: {reply.error}")
    added = st.session_state.get("added")
    if added:
        with st.sidebar:
            marker("add-result", f"added stream {added}", stream_id=added)
    with st.sidebar.form("stop-stream"):
        st.markdown("**Stop a stream**")
        sid = st.text_input("stream id", key="stop_id")
        if st.form_submit_button("Stop stream") and sid.strip():
            reply = api.stop_stream(sid.strip())
            if reply.ok:
                st.success(f"stopped {sid.strip()}")
            else:
                st.error(f"not stopped: {reply.error}")


def upload(server: str) -> None:
    st.subheader("classify a file")
    file = st.file_uploader("audio file", key="upload")
    if file is None:
        return
    key = (file.name, file.size)
    if st.session_state.get("upload_key") != key:
        with st.spinner("classifying…"):
            reply = Api(server).classify(file.name, file.getvalue(), file.type or "")
        st.session_state["upload_key"] = key
        st.session_state["upload_reply"] = reply
    reply = st.session_state["upload_reply"]
    if not reply.ok:
        st.error(f"The server did not classify {file.name}: {reply.error}")
        return
    try:
        result = reply.data
        segments = segments_from_json(result.get("segments"))
        windows = result.get("windows", [])
        facts = model_facts(server)
        colours = palette(facts)
        marker(
            "upload-result",
            f"{file.name}: {result['genre']} ({result['confidence']:.0%}) · "
            f"{result['duration_s']:.1f} s of audio · processed in {result['processing_ms']:.0f} ms"
            + (" (cached)" if result.get("cached") else ""),
            genre=result["genre"],
        )
        cols = st.columns([1, 2])
        with cols[0]:
            st.caption(f"whole file: mean of its {len(windows)} windows' probabilities")
            st.markdown(
                bars_html(dict(result["probabilities"]), colours, element_id="upload-bars"),
                unsafe_allow_html=True,
            )
        with cols[1]:
            if segments:
                decoding = result.get("decoding", "live")
                st.caption(
                    f"timeline ({decoding} decoding of the windows, speech and silence apart)"
                )
                marker(
                    "upload-timeline",
                    f"timeline ({decoding} decoding): "
                    + ", ".join(dict.fromkeys(s.genre for s in segments)),
                    labels=" ".join(dict.fromkeys(s.genre for s in segments)),
                    decoding=decoding,
                )
                st.markdown(
                    legend_html([s.genre for s in segments], colours)
                    + timeline_html(segments, colours, element_id="upload-timeline-chart"),
                    unsafe_allow_html=True,
                )
            st.dataframe(
                [
                    {
                        "start_s": w["start_s"],
                        "end_s": w["end_s"],
                        "genre": w["genre"],
                        "confidence": round(w["confidence"], 3),
                        "top": ", ".join(f"{p['label']} {p['prob']:.2f}" for p in w["top"]),
                    }
                    for w in windows
                ],
                height=220,
            )
    except (KeyError, TypeError, ValueError) as exc:
        st.error(f"The server's answer could not be read: {exc}")


def main() -> None:
    icon = str(ICON) if ICON.is_file() else None
    st.set_page_config(page_title=TITLE, page_icon=icon, layout="wide")
    server = server_url(sys.argv[1:])
    st.markdown(STYLE.replace("</style>", CHART_CSS + "</style>"), unsafe_allow_html=True)
    st.markdown(f"#### {TITLE}")
    sidebar(server)
    live_view(server)
    upload(server)


main()
