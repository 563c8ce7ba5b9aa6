"""The HTML pages the server renders itself: the landing page (``/``) and the API page (``/docs``).

Both are built from the same facts as the JSON routes -- the landing page from ``/ready``'s
answer (its labels and their colours), the API page from the OpenAPI document of
:mod:`stream_server.serve.openapi` -- and need nothing from outside the server: no script or
style from elsewhere. The landing page reads the stream counts with a small script, as the
``/mic`` page does: with tokens configured it takes one from the address's ``#token=``
fragment, which the browser never sends.

Whether the dashboard runs is asked of Streamlit's health route on this machine
(``127.0.0.1:`` ``server.dashboard_port``), with a short timeout, and kept a few seconds.
"""

from __future__ import annotations

import html
import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from stream_server.core.palette import chip_html
from stream_server.core.records import FINAL_STATES

__all__ = [
    "Landing",
    "chips",
    "dashboard_running",
    "render_docs",
    "render_landing",
]

#: Seconds the dashboard check may take; seconds its answer is kept.
DASHBOARD_TIMEOUT_S = 0.3
DASHBOARD_KEEP_S = 3.0

_checked: dict[int, tuple[float, bool]] = {}


async def dashboard_running(port: int) -> bool:
    """Whether a Streamlit app answers its health check on ``127.0.0.1:port`` (default
    :data:`DASHBOARD_PORT`), within :data:`DASHBOARD_TIMEOUT_S`; kept
    :data:`DASHBOARD_KEEP_S` seconds."""
    now = time.monotonic()
    kept = _checked.get(port)
    if kept is not None and now - kept[0] < DASHBOARD_KEEP_S:
        return kept[1]
    try:
        async with httpx.AsyncClient(timeout=DASHBOARD_TIMEOUT_S, trust_env=False) as client:
            reply = await client.get(f"http://127.0.0.1:{port}/_stcore/health")
        running = reply.status_code == 200
    except httpx.HTTPError:
        running = False
    _checked[port] = (time.monotonic(), running)
    return running


# -- shared look -----------------------------------------------------------------------------

_STYLE = """
:root { --fg: #1d2330; --muted: #6b7385; --line: #e3e6ee; --bg: #f6f7fb; --accent: #3a6df0;
        --ok: #1f8a4c; --warn: #a15c00; --bad: #a52222; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif;
       color: var(--fg); background: var(--bg); }
main { max-width: 980px; margin: 28px auto 48px; padding: 0 18px; }
a { color: var(--accent); text-decoration: none; }
a:hover { text-decoration: underline; }
header.top { display: flex; align-items: center; gap: 12px; margin-bottom: 6px; }
header.top img { width: 36px; height: 36px; }
header.top h1 { font-size: 24px; margin: 0; letter-spacing: -.3px; }
header.top .version { color: var(--muted); font-size: 13px; font-weight: 400; }
.tagline { color: var(--muted); margin: 0 0 18px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 16px 18px;
        margin: 14px 0; }
.card > h2 { font-size: 13px; text-transform: uppercase; letter-spacing: .6px; color: var(--muted);
             margin: 0 0 10px; font-weight: 650; }
code, pre { font: 13px/1.45 ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; }
code { background: #f0f2f7; padding: 1px 5px; border-radius: 4px; }
pre { background: #f0f2f7; padding: 10px 12px; border-radius: 6px; margin: 6px 0;
      overflow-x: auto; }
.muted { color: var(--muted); }
.pill { display: inline-block; padding: 1px 10px; border-radius: 999px; font-size: 13px;
        font-weight: 600; }
.pill.ok { background: #e3f4ea; color: var(--ok); }
.pill.warn { background: #fdf1dc; color: var(--warn); }
.pill.bad { background: #fdecec; color: var(--bad); }
table { border-collapse: collapse; width: 100%; font-size: 14px; }
th, td { text-align: left; vertical-align: top; padding: 5px 8px;
         border-bottom: 1px solid var(--line); }
th { color: var(--muted); font-weight: 600; font-size: 12px; text-transform: uppercase;
     letter-spacing: .4px; }
"""

_HEAD = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="icon" href="/favicon.svg" type="image/svg+xml">
<link rel="alternate icon" href="/favicon.ico">
<style>{style}</style>
</head>
"""


def _head(title: str, style: str) -> str:
    return _HEAD.format(title=html.escape(title), style=_STYLE + style)


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _prose(text: str) -> str:
    """Plain text with `code` spans and blank-line paragraphs, as HTML."""
    out = []
    for paragraph in re.split(r"\n\s*\n", text.strip()):
        escaped = html.escape(" ".join(paragraph.split()))
        out.append("<p>" + re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped) + "</p>")
    return "".join(out)


# -- the landing page ------------------------------------------------------------------------


@dataclass(frozen=True)
class Landing:
    """What the landing page shows.

    ``ready``: ``/ready``'s answer (``ready`` true or false); ``version``: the server's;
    ``streams``: ``(live, stored)`` when anyone may read them (no tokens), else None (the page
    reads them itself); ``guarded``: tokens are configured; ``dashboard_url``: where the
    dashboard answers, None when it does not run; ``port``: the dashboard's port.
    """

    ready: Mapping[str, Any]
    version: str
    streams: tuple[int, int] | None
    guarded: bool
    dashboard_url: str | None
    dashboard_port: int = 8501
    open_metrics: bool = False


_LANDING_STYLE = """
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(280px, 1fr)); gap: 14px; }
.grid .card { margin: 0; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; margin: 0; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; overflow-wrap: anywhere; }
.chips { display: flex; flex-wrap: wrap; gap: 6px; margin-top: 12px; }
.chip { padding: 2px 10px; border-radius: 999px; font-size: 13px; font-weight: 600; }
.count { font-size: 34px; font-weight: 650; letter-spacing: -.5px; line-height: 1.1; }
.count small { font-size: 14px; color: var(--muted); font-weight: 400; letter-spacing: 0; }
.tiles { display: grid; grid-template-columns: repeat(auto-fit, minmax(210px, 1fr)); gap: 10px; }
.tile { display: block; border: 1px solid var(--line); border-radius: 8px; padding: 10px 12px;
        color: var(--fg); background: #fff; }
.tile:hover { border-color: var(--accent); text-decoration: none; }
.tile b { display: block; color: var(--accent); }
.tile span { color: var(--muted); font-size: 13px; }
.tile.off { background: #fafbfd; border-style: dashed; }
.tile.off b { color: var(--muted); }
ul.api { list-style: none; padding: 0; margin: 0; columns: 2; font-size: 14px; }
ul.api li { padding: 3px 0; break-inside: avoid; }
.lock { color: var(--warn); font-size: 12px; }
"""

_LANDING_SCRIPT = """
"use strict";
const $ = (id) => document.getElementById(id);
function tokenFromAddress() {
  const match = /(?:^|&)token=([^&]*)/.exec(location.hash.slice(1));
  if (!match || !match[1]) return null;
  try { return decodeURIComponent(match[1]); } catch (err) { return match[1]; }
}
let TOKEN = tokenFromAddress();
// Pages of this server that take a token in their address get it passed on.
function passToken() {
  for (const a of document.querySelectorAll("a[data-token]")) {
    a.hash = TOKEN ? `token=${encodeURIComponent(TOKEN)}` : "";
  }
}
function plural(n, word) { return `${n} ${word}${n === 1 ? "" : "s"}`; }
async function refreshStreams() {
  const box = $("streams");
  let res;
  try {
    res = await fetch("/streams", { headers: TOKEN ? { authorization: `Bearer ${TOKEN}` } : {} });
  } catch (err) {
    box.dataset.state = "error";
    $("stream-note").textContent = "The server does not answer.";
    return;
  }
  if (res.status === 401 || res.status === 403) {
    box.dataset.state = "locked";
    $("live-count").textContent = "?";
    $("stored-count").textContent = "";
    $("stream-note").textContent = TOKEN
      ? "This token may not read the streams (it needs the 'read' scope)."
      : "This server needs a token to list streams: open this page as /#token=YOUR_TOKEN.";
    return;
  }
  if (!res.ok) return;
  const body = await res.json();
  const live = body.streams.filter((s) => !FINAL_STATES.includes(s.state)).length;
  $("live-count").textContent = String(live);
  $("stored-count").textContent = `live · ${plural(body.streams.length - live, "stored stream")}`;
  $("stream-note").textContent = "";
  box.dataset.state = "shown";
}
async function waitReady() {
  try {
    const res = await fetch("/ready");
    if (res.ok) { location.reload(); return; }
    const body = await res.json().catch(() => ({}));
    if (body.error) return;  // it failed: nothing to wait for
  } catch (err) { /* the server is restarting: try again */ }
  setTimeout(waitReady, 2000);
}
window.addEventListener("hashchange", () => {
  TOKEN = tokenFromAddress();
  passToken();
  refreshStreams();
});
passToken();
refreshStreams();
setInterval(refreshStreams, 5000);
if (document.body.dataset.ready !== "true") setTimeout(waitReady, 2000);
"""


def _model_card(ready: Mapping[str, Any]) -> str:
    if not ready.get("ready"):
        failed = ready.get("error")
        status = (
            f'<span class="pill bad">failed to load</span><p>{_e(failed)}</p>'
            if failed
            else '<span class="pill warn">loading…</span>'
            '<p class="muted">The page reloads once the model is ready.</p>'
        )
        return f'<section class="card" id="model"><h2>Model</h2>{status}</section>'
    trained = (
        "yes"
        if ready["trained"]
        else '<span class="pill warn">no</span> <span class="muted">untrained weights: '
        "the genres it names are random</span>"
    )
    labels = chips(ready["labels"], ready["colours"])
    return f"""<section class="card" id="model"><h2>Model</h2>
<dl class="facts">
<dt>status</dt><dd><span class="pill ok">ready</span></dd>
<dt>model</dt><dd><code id="model-source">{_e(ready["model"])}</code></dd>
<dt>trained</dt><dd id="trained">{trained}</dd>
<dt>device</dt><dd id="device">{_e(ready["device"])}</dd>
<dt>precision</dt><dd id="precision">{_e(ready["precision"])}</dd>
<dt>windows</dt><dd>{_e(f"{ready['window_s']:g}")} s of audio every {_e(f"{ready['hop_s']:g}")} s,
at {_e(ready["sample_rate"])} Hz</dd>
</dl>
<div class="chips" id="labels" title="one colour per label, the same on every page">{labels}</div>
</section>"""


def _streams_card(page: Landing) -> str:
    if page.streams is not None:
        live, stored = page.streams
        count, rest, state = (
            str(live),
            f"live · {stored} stored stream{'s' * (stored != 1)}",
            "shown",
        )
    else:
        count, rest, state = "…", "", "pending"
    return f"""<section class="card" id="streams" data-state="{state}"><h2>Streams</h2>
<div class="count"><span id="live-count">{count}</span>
<small id="stored-count">{rest}</small></div>
<p class="muted" id="stream-note"></p>
<p class="muted">Send one: the microphone page, <code>genrecast push FILE_OR_URL</code>, or
<code>POST /streams</code>. Watch them: <code>genrecast watch</code> or the dashboard.</p>
</section>"""


def _tile(href: str, title: str, text: str, *, token: bool = False, ident: str = "") -> str:
    extra = " data-token" if token else ""
    ident_attr = f' id="{ident}"' if ident else ""
    return (
        f'<a class="tile" href="{_e(href)}"{extra}{ident_attr}><b>{_e(title)}</b>'
        f"<span>{text}</span></a>"
    )


def render_landing(page: Landing) -> str:
    """The landing page's HTML."""
    if page.dashboard_port == 0:
        dashboard = ""
    elif page.dashboard_url is not None:
        dashboard = _tile(
            page.dashboard_url,
            "Dashboard",
            "Every stream live: genres, timelines, titles.",
            ident="dashboard",
        )
    else:
        dashboard = (
            '<div class="tile off" id="dashboard"><b>Dashboard: not running</b>'
            f"<span>Start it with <code>genrecast dashboard</code> (it listens on port "
            f"{page.dashboard_port}); then reload this page.</span></div>"
        )
    lock = ' <span class="lock" title="needs a token">read token</span>' if page.guarded else ""
    metrics_lock = "" if page.open_metrics else lock
    title = "genrecast"
    version = f'<span class="version">{_e(page.version)}</span>' if page.version else ""
    ready = "true" if page.ready.get("ready") else "false"
    return f"""{_head(title, _LANDING_STYLE)}<body data-ready="{ready}">
<main>
<header class="top"><img src="/favicon.svg" alt=""><h1>genrecast {version}</h1></header>
<p class="tagline">Real-time music-genre monitor: live audio in, a live genre timeline out.</p>
<div class="grid">
{_model_card(page.ready)}
{_streams_card(page)}
</div>
<section class="card" id="open"><h2>Open</h2>
<div class="tiles">
{dashboard}
{_tile("/mic", "Microphone", "Stream this browser's microphone and see its genre.", token=True)}
{_tile("/docs", "API documentation", "Every HTTP route and the WebSocket protocol.")}
</div>
</section>
<section class="card" id="api"><h2>For programs</h2>
<ul class="api">
<li><a href="/openapi.json">/openapi.json</a> <span class="muted">the API, OpenAPI 3.1</span></li>
<li><a href="/streams">/streams</a>{lock} <span class="muted">live and stored streams</span></li>
<li><a href="/health">/health</a> <span class="muted">the process is alive</span></li>
<li><a href="/ready">/ready</a> <span class="muted">model, labels, colours</span></li>
<li><a href="/metrics">/metrics</a>{metrics_lock} <span class="muted">Prometheus</span></li>
<li><code>/ws/updates</code>{lock} <span class="muted">live messages (WebSocket)</span></li>
</ul>
</section>
</main>
<script>const FINAL_STATES = {json.dumps(sorted(FINAL_STATES))};{_LANDING_SCRIPT}</script>
</body>
</html>
"""


# -- the API page ----------------------------------------------------------------------------

_DOCS_STYLE = """
main { max-width: 1060px; }
nav.toc { columns: 3; font-size: 14px; }
nav.toc a { display: block; padding: 1px 0; }
h2.section { font-size: 20px; margin: 30px 0 8px; }
.op { scroll-margin-top: 12px; }
.op h3, .msg h3 { font-size: 16px; margin: 0 0 4px; display: flex; gap: 10px; align-items: center;
                  flex-wrap: wrap; }
.op h3 code, .msg h3 code { background: none; padding: 0; font-size: 15px; }
.method { font: 700 12px/1 ui-monospace, monospace; padding: 4px 7px; border-radius: 4px;
          color: #fff; min-width: 58px; text-align: center; }
.method.get { background: #2f7d4f; } .method.post { background: #3a6df0; }
.method.delete { background: #b3362f; } .method.ws { background: #7a4fb3; }
.scope { font-size: 12px; padding: 1px 8px; border-radius: 999px; background: #fdf1dc;
         color: var(--warn); font-weight: 600; }
.scope.open { background: #e3f4ea; color: var(--ok); }
.op p, .msg p { margin: 4px 0; }
.op h4, .msg h4 { font-size: 12px; text-transform: uppercase; letter-spacing: .5px;
                  color: var(--muted); margin: 12px 0 4px; }
.status { font-weight: 700; font-family: ui-monospace, monospace; }
.status.s2 { color: var(--ok); } .status.s4, .status.s5 { color: var(--bad); }
.msg { border-left: 3px solid var(--line); padding: 2px 0 2px 12px; margin: 14px 0; }
td.req { color: var(--muted); font-size: 12px; }
table { table-layout: fixed; }
td { overflow-wrap: anywhere; }
td p { margin: 0; }
"""

_REF = "#/components/schemas/"


def _anchor(name: str) -> str:
    return "schema-" + re.sub(r"[^A-Za-z0-9_-]", "-", name)


def _type_html(schema: Mapping[str, Any]) -> str:
    """A schema as a short type expression, TypedDicts linked to their tables."""
    ref = schema.get("$ref")
    if isinstance(ref, str):
        name = ref.removeprefix(_REF)
        return f'<a href="#{_anchor(name)}">{_e(name)}</a>'
    if "anyOf" in schema:
        parts = [_type_html(s) for s in schema["anyOf"]]
        return " or ".join(parts)
    if "enum" in schema:
        return " | ".join(f"<code>{_e(json.dumps(v))}</code>" for v in schema["enum"])
    kind = schema.get("type")
    if kind == "array":
        return "array of " + _type_html(schema.get("items", {}))
    if kind == "object":
        if "properties" in schema:
            fields = ", ".join(f"{_e(k)}: {_type_html(v)}" for k, v in schema["properties"].items())
            return f"object {{{fields}}}"
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            return "object of string → " + _type_html(extra)
        return "object"
    if kind == "string" and schema.get("format") == "binary":
        return "bytes"
    if kind == "null":
        return "null"
    if isinstance(kind, str):
        return kind
    return "any"


def _fields_table(schema: Mapping[str, Any]) -> str:
    props: Mapping[str, Any] = schema.get("properties", {})
    if not props:
        return ""
    required = set(schema.get("required", []))
    rows = "".join(
        f"<tr><td><code>{_e(key)}</code></td><td>{_type_html(value)}</td>"
        f'<td class="req">{"required" if key in required else "optional"}</td></tr>'
        for key, value in props.items()
    )
    return (
        '<table class="fields"><colgroup><col style="width:28%"><col style="width:54%">'
        '<col style="width:18%"></colgroup>'
        f"<tr><th>field</th><th>type</th><th></th></tr>{rows}</table>"
    )


def _params_table(params: Sequence[Mapping[str, Any]]) -> str:
    rows = "".join(
        f"<tr><td><code>{_e(p['name'])}</code></td><td>{_e(p['in'])}</td>"
        f"<td>{_type_html(p.get('schema', {}))}</td>"
        f"<td>{'required' if p.get('required') else 'optional'}</td>"
        f"<td>{_prose(p.get('description', ''))}</td></tr>"
        for p in params
    )
    return (
        '<table class="params"><colgroup><col style="width:16%"><col style="width:8%">'
        '<col style="width:14%"><col style="width:10%"><col style="width:52%"></colgroup>'
        "<tr><th>name</th><th>in</th><th>type</th><th></th><th>description</th></tr>"
        f"{rows}</table>"
    )


def _content_html(content: Mapping[str, Any]) -> str:
    parts = []
    for media, item in content.items():
        schema = item.get("schema")
        shown = _type_html(schema) if schema else ""
        parts.append(f"<code>{_e(media)}</code>{' ' + shown if shown else ''}")
    return "<br>".join(parts)


def _scope_badge(scope: object, guarded: bool, any_token: bool = False) -> str:
    if any_token:
        return '<span class="scope" title="any valid token, whatever its scopes">any token</span>'
    if scope is None:
        return '<span class="scope open">open</span>'
    note = "needs a token with this scope" if guarded else "scope it needs when tokens are set"
    return f'<span class="scope" title="{note}">{_e(scope)}</span>'


def _op_html(method: str, path: str, op: Mapping[str, Any]) -> str:
    ident = op.get("operationId") or f"{method}-{path}"
    guarded = "security" in op
    out = [
        f'<section class="card op" id="op-{_e(ident)}"><h3>'
        f'<span class="method {_e(method)}">{_e(method.upper())}</span>'
        f"<code>{_e(path)}</code>"
        f"{_scope_badge(op.get('x-scope'), guarded, bool(op.get('x-any-token')))}</h3>",
        f"<p><b>{_e(op.get('summary', ''))}</b></p>",
    ]
    if op.get("description"):
        out.append(_prose(op["description"]))
    if op.get("parameters"):
        out.append("<h4>Parameters</h4>" + _params_table(op["parameters"]))
    body = op.get("requestBody")
    if body:
        out.append(
            "<h4>Request body</h4>" + _prose(body.get("description", ""))
            + _content_html(body.get("content", {}))
        )  # fmt: skip
    rows = []
    for status, answer in op.get("responses", {}).items():
        rows.append(
            f'<tr><td class="status s{_e(status[:1])}">{_e(status)}</td>'
            f"<td>{_prose(answer.get('description', ''))}</td>"
            f"<td>{_content_html(answer.get('content', {}))}</td></tr>"
        )
    out.append(
        '<h4>Responses</h4><table class="responses"><colgroup><col style="width:10%">'
        '<col style="width:50%"><col style="width:40%"></colgroup>'
        "<tr><th>status</th><th>meaning</th><th>body</th></tr>"
        + "".join(rows)
        + "</table></section>"
    )
    return "".join(out)


def _message_html(name: str, schema: Mapping[str, Any]) -> str:
    """One WebSocket message: its ``type``, what it means, its fields."""
    kind = schema.get("properties", {}).get("type", {}).get("enum", [name])[0]
    return (
        f'<div class="msg" id="{_anchor(name)}" data-type="{_e(kind)}"><h3>'
        f'<code>{_e(kind)}</code><span class="muted">{_e(name)}</span></h3>'
        f"{_prose(schema.get('description', ''))}{_fields_table(schema)}</div>"
    )


def _resolve(doc: Mapping[str, Any], schema: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]]:
    ref = str(schema.get("$ref", ""))
    name = ref.removeprefix(_REF)
    return name, doc.get("components", {}).get("schemas", {}).get(name, schema)


def _sockets_html(doc: Mapping[str, Any], shown: set[str]) -> str:
    ws: Mapping[str, Any] = doc.get("x-websockets", {})
    out = ['<h2 class="section" id="websockets">WebSockets</h2>']
    for path, sock in ws.get("paths", {}).items():
        out.append(
            f'<section class="card op" id="ws-{_e(path.strip("/").replace("/", "-"))}"><h3>'
            f'<span class="method ws">WS</span><code>{_e(path)}</code>'
            f"{_scope_badge(sock.get('x-scope'), False)}</h3>"
            f"<p><b>{_e(sock.get('summary', ''))}</b></p>{_prose(sock.get('description', ''))}"
        )
        if sock.get("parameters"):
            out.append("<h4>Query parameters</h4>" + _params_table(sock["parameters"]))
        for title, key in (
            ("The client sends", "client_messages"),
            ("The server sends", "server_messages"),
        ):
            items = sock.get(key) or []
            if not items and not (key == "client_messages" and sock.get("client_binary")):
                continue
            out.append(f"<h4>{title}</h4>")
            for item in items:
                name, schema = _resolve(doc, item)
                if name in shown:
                    kind = schema.get("properties", {}).get("type", {}).get("enum", [name])[0]
                    out.append(
                        f'<p>→ <a href="#{_anchor(name)}"><code>{_e(kind)}</code></a> (above)</p>'
                    )
                    continue
                shown.add(name)
                out.append(_message_html(name, schema))
            if key == "client_messages" and sock.get("client_binary"):
                out.append(
                    '<div class="msg" data-type="binary"><h3><code>binary frame</code></h3>'
                    f"{_prose(sock['client_binary'])}</div>"
                )
        out.append("</section>")
    codes = "".join(
        f'<tr><td class="status">{_e(code)}</td><td>{_prose(text)}</td></tr>'
        for code, text in ws.get("close_codes", {}).items()
    )
    errors = "".join(
        f"<tr><td><code>{_e(code)}</code></td><td>{_prose(text)}</td></tr>"
        for code, text in ws.get("error_codes", {}).items()
    )
    out.append(
        '<section class="card" id="close-codes"><h2>Close codes</h2>'
        '<table><colgroup><col style="width:10%"><col style="width:90%"></colgroup>'
        f"<tr><th>code</th><th>when</th></tr>{codes}</table></section>"
        '<section class="card" id="error-codes"><h2>Codes of <code>error</code> messages</h2>'
        '<table><colgroup><col style="width:22%"><col style="width:78%"></colgroup>'
        f"<tr><th>code</th><th>meaning</th></tr>{errors}</table></section>"
    )
    return "".join(out)


def _tagged(doc: Mapping[str, Any]) -> dict[str, list[tuple[str, str, Mapping[str, Any]]]]:
    by_tag: dict[str, list[tuple[str, str, Mapping[str, Any]]]] = {
        t["name"]: [] for t in doc.get("tags", [])
    }
    for path, item in doc.get("paths", {}).items():
        for method, op in item.items():
            tag = (op.get("tags") or ["other"])[0]
            by_tag.setdefault(tag, []).append((method, path, op))
    return {tag: ops for tag, ops in by_tag.items() if ops}


def render_docs(doc: Mapping[str, Any]) -> str:
    """The OpenAPI document ``doc`` (with its ``x-websockets``) as one HTML page."""
    info: Mapping[str, Any] = doc.get("info", {})
    tags = {t["name"]: t.get("description", "") for t in doc.get("tags", [])}
    by_tag = _tagged(doc)
    guarded = any("security" in op for ops in by_tag.values() for _, _, op in ops)
    toc = []
    for tag, ops in by_tag.items():
        toc.append(f'<a href="#tag-{_e(tag)}"><b>{_e(tag)}</b></a>')
        toc += [
            f'<a href="#op-{_e(op.get("operationId", ""))}">{_e(m.upper())} {_e(p)}</a>'
            for m, p, op in ops
        ]
    toc.append('<a href="#websockets"><b>WebSockets</b></a>')
    toc += [
        f'<a href="#ws-{_e(p.strip("/").replace("/", "-"))}">WS {_e(p)}</a>'
        for p in doc.get("x-websockets", {}).get("paths", {})
    ]
    toc.append('<a href="#schemas"><b>Schemas</b></a>')
    sections = []
    for tag, ops in by_tag.items():
        sections.append(
            f'<h2 class="section" id="tag-{_e(tag)}">{_e(tag)} '
            f'<small class="muted">{_e(tags.get(tag, ""))}</small></h2>'
        )
        sections += [_op_html(m, p, op) for m, p, op in ops]
    shown: set[str] = set()
    sockets = _sockets_html(doc, shown)
    schemas = doc.get("components", {}).get("schemas", {})
    tables = "".join(
        f'<section class="card msg" id="{_anchor(name)}"><h3><code>{_e(name)}</code></h3>'
        f"{_prose(schema.get('description', ''))}{_fields_table(schema)}</section>"
        for name, schema in schemas.items()
        if name not in shown
    )
    auth = (
        "<p>This server needs a token: send <code>Authorization: Bearer TOKEN</code> with a "
        "token of the scope each route names; a browser's WebSocket passes a ticket from "
        "<code>POST /auth/ticket</code> as <code>?ticket=</code>. Routes marked "
        '<span class="scope open">open</span> need none.</p>'
        if guarded
        else "<p>This server needs no token. With tokens configured, each route needs the "
        'scope its badge names; <span class="scope open">open</span> ones never do.</p>'
    )
    title = f"{info.get('title', 'API')} · API"
    return f"""{_head(title, _DOCS_STYLE)}<body>
<main>
<header class="top"><a href="/"><img src="/favicon.svg" alt="home"></a>
<h1>{_e(info.get("title", ""))} API
<span class="version">{_e(info.get("version", ""))}</span></h1></header>
<div class="tagline">{_prose(info.get("description", ""))}</div>
<section class="card"><h2>About this page</h2>
<p>Generated from the server's own routes: the same description as JSON is
<a href="/openapi.json">/openapi.json</a> (OpenAPI {_e(doc.get("openapi", ""))}).</p>{auth}
<nav class="toc">{"".join(toc)}</nav></section>
{"".join(sections)}
{sockets}
<h2 class="section" id="schemas">Schemas</h2>
{tables}
</main>
</body>
</html>
"""


def chips(labels: Iterable[str], colours: Mapping[str, str]) -> str:
    """Labels as coloured chips (HTML)."""
    return "".join(chip_html(label, colours) for label in labels)
