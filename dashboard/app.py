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
from typing import Any

import streamlit as st

from dashboard.api import Api, Reply
from dashboard.charts import NEUTRAL, probability_chart, timeline_chart
from dashboard.feed import Feed
from dashboard.metrics import MetricsSample, key_metrics, parse_metrics
from dashboard.state import (
    DashboardState,
    format_age,
    merge_segments,
    recent,
    segments_from_json,
)
from stream_server.core.timeline import segments_to_csv
from stream_server.messages import NON_MUSIC_LABELS
from stream_server.tools.client import resolve_token

DEFAULT_SERVER = "http://127.0.0.1:8000"
TITLE = "genrecast live dashboard"


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


def label_html(label: str) -> str:
    """``label`` as HTML: speech and silence in the neutral grey of the charts, genres as
    they are."""
    text = html.escape(label)
    if label in NON_MUSIC_LABELS:
        return f'<span class="neutral" style="color:{NEUTRAL}">{text}</span>'
    return text


def show_error(where: str, reply: Reply) -> None:
    st.warning(f"{where}: {reply.error}")


def header(api: Api, feed: Feed) -> bool:
    """Server status and key metrics; returns whether the server answered."""
    health = api.health()
    if not health.ok:
        marker("server-status", "server down", state="down")
        st.error(
            f"The genrecast server at {api.base} is not reachable ({health.error}). "
            "Retrying every second…"
        )
        return False
    status = "connected" if feed.connected else feed.status
    marker("server-status", f"server up at {api.base} · live updates: {status}", state="up")
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
    cols = st.columns(5)
    cols[0].metric("live streams", km.active_streams)
    cols[1].metric("windows/s", "-" if km.windows_per_s is None else f"{km.windows_per_s:.1f}")
    cols[2].metric(
        "p99 latency", "-" if km.p99_latency_ms is None else f"{km.p99_latency_ms:.0f} ms"
    )
    cols[3].metric("windows computed", km.windows_computed)
    cols[4].metric("skipped windows", km.windows_skipped)
    return True


def streams_table(streams: list[dict[str, Any]], state: DashboardState) -> None:
    now = time.time()
    rows = []
    for s in streams:
        sid = str(s.get("stream_id", ""))
        view = state.streams.get(sid)
        genre = (view.genre if view else None) or s.get("genre") or "-"
        conf = view.confidence if view and view.genre else s.get("confidence")
        live = s.get("state") not in ("ended", "failed", "lost")
        started = s.get("created_at")
        ended = s.get("ended_at")
        age = (now if live else (ended or now)) - started if isinstance(started, float) else None
        lag = s.get("lag_s")
        cells = [
            html.escape(str(s.get("name") or sid)),
            html.escape(str(s.get("kind", ""))),
            html.escape(str(s.get("state", ""))),
            label_html(str(genre)) + ("" if conf is None else f" ({float(conf):.0%})"),
            "-" if lag is None else f"{float(lag):.1f} s",
            format_age(age),
        ]
        tds = "".join(f"<td>{c}</td>" for c in cells)
        rows.append(
            f'<tr data-stream-id="{html.escape(sid)}"'
            f' data-state="{html.escape(str(s.get("state")))}"'
            f' data-genre="{html.escape(str(genre))}">{tds}</tr>'
        )
    head = "".join(f"<th>{h}</th>" for h in ("stream", "kind", "state", "genre", "lag", "live for"))
    st.markdown(
        f'<table id="streams" style="width:100%"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>",
        unsafe_allow_html=True,
    )


@st.cache_data(ttl=2.0, show_spinner=False)
def history(server: str, stream_id: str) -> tuple[dict[str, Any] | None, str]:
    """The stored timeline (JSON) and its CSV, cached for 2 s."""
    api = Api(server)
    reply = api.timeline(stream_id)
    csv = api.timeline_csv(stream_id)
    return (reply.data if reply.ok else None), (csv.data if csv.ok else "")


def selected_stream(api: Api, streams: list[dict[str, Any]], state: DashboardState) -> None:
    ids = [str(s["stream_id"]) for s in streams if "stream_id" in s]
    names = {str(s["stream_id"]): str(s.get("name") or s["stream_id"]) for s in streams}
    if not ids:
        st.info("No streams yet: push one (`genrecast push FILE`) or add a radio URL on the left.")
        return
    current = st.session_state.get("stream")
    if current not in ids:
        live = [str(s["stream_id"]) for s in streams if s.get("state") == "live"]
        st.session_state["stream"] = (live or ids)[0]
    sid = st.selectbox(
        "stream", ids, key="stream", format_func=lambda i: f"{names.get(i, i)} ({i})"
    )
    view = state.streams.get(sid)
    row = next((s for s in streams if s.get("stream_id") == sid), {})
    genre = (view.genre if view else None) or row.get("genre")
    conf = (view.confidence if view and view.genre else row.get("confidence")) or 0.0
    title = (view.title if view else "") or row.get("title") or ""
    left, right = st.columns([2, 1])
    with left:
        if genre:
            st.markdown(f"### {label_html(str(genre))} · {float(conf):.0%}", unsafe_allow_html=True)
        marker(
            "current-genre",
            f"current genre: {genre or 'waiting for the first window'}",
            genre=genre or "",
            stream_id=sid,
            neutral=str(genre) in NON_MUSIC_LABELS,
        )
        if title:
            marker("current-title", f"now playing: {title}", title=title)
        data, csv = history(api.base, sid)
        stored = segments_from_json(data.get("segments") if data else None)
        live_segments = view.segments() if view else []
        segments = merge_segments(stored, live_segments)
        minutes = st.slider("timeline: last minutes", 1, 60, 10, key="minutes")
        shown = recent(segments, float(minutes))
        titles = view.titles if view else []
        if not titles and data:
            titles = [(float(t["stream_time_s"]), str(t["title"])) for t in data.get("titles", [])]
        marker("timeline", f"{len(shown)} segment(s)", segments=len(shown))
        if shown:
            lo = shown[0].start_s
            st.altair_chart(
                timeline_chart(
                    shown,
                    [c for c in state.changes_of(sid) if c.stream_time_s >= lo],
                    [t for t in titles if t[0] >= lo],
                    labels=view.probabilities if view else (),
                )
            )
        exports = st.columns(2)
        payload = data or {"stream_id": sid, "segments": [s.to_dict() for s in segments]}
        exports[0].download_button(
            "timeline CSV",
            csv or segments_to_csv(segments),
            file_name=f"{sid}-timeline.csv",
            mime="text/csv",
            on_click="ignore",
            key="csv",
        )
        exports[1].download_button(
            "timeline JSON",
            json.dumps(payload, indent=2),
            file_name=f"{sid}-timeline.json",
            mime="application/json",
            on_click="ignore",
            key="json",
        )
    with right:
        st.caption("smoothed probabilities")
        if view and view.probabilities:
            st.altair_chart(probability_chart(view.probabilities))
        else:
            st.write("-")
    st.subheader("genre changes")
    changes = list(reversed(state.changes_of(sid)))[:20]
    items = "".join(
        f"<li>t={c.stream_time_s:.1f} s: {label_html(c.previous or 'start')} → "
        f"<b>{label_html(c.genre)}</b> ({c.confidence:.0%})</li>"
        for c in changes
    )
    st.markdown(f'<ul id="changes">{items or "<li>none yet</li>"}</ul>', unsafe_allow_html=True)


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
        st.subheader("streams")
        streams_table(reply.data, state)
        selected_stream(api, reply.data, state)
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
        marker(
            "upload-result",
            f"{file.name}: {result['genre']} ({result['confidence']:.0%}) · "
            f"{result['duration_s']:.1f} s of audio · processed in {result['processing_ms']:.0f} ms"
            + (" (cached)" if result.get("cached") else ""),
            genre=result["genre"],
        )
        cols = st.columns([1, 2])
        segments = segments_from_json(result.get("segments"))
        labels = [*result["probabilities"], *(s.genre for s in segments)]
        with cols[0]:
            st.altair_chart(
                probability_chart(dict(result["probabilities"]), bar_px=26, labels=labels)
            )
        with cols[1]:
            if segments:
                marker(
                    "upload-timeline",
                    f"timeline ({result.get('decoding', 'live')} decoding): "
                    + ", ".join(dict.fromkeys(s.genre for s in segments)),
                    labels=" ".join(dict.fromkeys(s.genre for s in segments)),
                    decoding=result.get("decoding", ""),
                )
                st.altair_chart(timeline_chart(segments, labels=labels))
            st.dataframe(
                [
                    {
                        "start_s": w["start_s"],
                        "end_s": w["end_s"],
                        "genre": w["genre"],
                        "confidence": round(w["confidence"], 3),
                        "top": ", ".join(f"{p['label']} {p['prob']:.2f}" for p in w["top"]),
                    }
                    for w in result.get("windows", [])
                ],
                height=220,
            )
    except (KeyError, TypeError, ValueError) as exc:
        st.error(f"The server's answer could not be read: {exc}")


def main() -> None:
    st.set_page_config(page_title=TITLE, layout="wide")
    server = server_url(sys.argv[1:])
    st.title(TITLE)
    sidebar(server)
    live_view(server)
    upload(server)


main()
