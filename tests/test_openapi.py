"""``GET /openapi.json``: an OpenAPI 3.1 document made from the app's own routes, which lists every
route with its methods, whose references resolve, whose schemas fit what the server answers, and
whose ``x-websockets`` section covers every message of :mod:`stream_server.messages` and every
close and error code the server uses."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args, get_type_hints

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Route, WebSocketRoute

from stream_server import messages
from stream_server.config import Config
from stream_server.inference.model import LoadedModel
from stream_server.serve.app import OPEN_PATHS, create_app, required_scope
from stream_server.serve.auth import TOKEN_ENV, load_tokens
from stream_server.serve.openapi import CLOSE_CODES, ERROR_CODES, OPERATIONS, openapi_schema
from stream_server.serve.service import Service
from tests.helpers.audio import encode_audio, music
from tests.helpers.live import (
    ALL,
    install_tokens,
    run,
    send_audio,
    serving,
    start_stream,
    stop_stream,
    ws,
)
from tests.helpers.schema import REF, answer_schema, problems, shape_problems

ROOT = Path(__file__).resolve().parents[1]
BEARER = {"Authorization": f"Bearer {ALL}"}


def app_of(config: Config, *, guarded: bool = False) -> Starlette:
    tokens = load_tokens({}, {TOKEN_ENV: ALL} if guarded else {})
    return create_app(Service(config), tokens)


def document(app: Starlette, *, guarded: bool = False) -> dict[str, Any]:
    return openapi_schema(
        app.routes,
        required=lambda method, path: required_scope(method, path),
        guarded=guarded,
        json_paths={"/streams", "/webrtc/offer"},
        version="test",
    )


def http_routes(app: Starlette) -> set[tuple[str, str]]:
    """``(method, path)`` of every HTTP route of ``app`` (HEAD follows GET)."""
    return {
        (method, route.path)
        for route in app.routes
        if isinstance(route, Route)
        for method in route.methods or ()
        if method != "HEAD"
    }


@pytest.mark.parametrize("guarded", [False, True])
def test_the_document_is_openapi_3_and_lists_every_route_with_its_methods(
    make_config: Callable[..., Config], guarded: bool
) -> None:
    app = app_of(make_config(), guarded=guarded)
    doc = document(app, guarded=guarded)
    assert doc["openapi"].startswith("3.1")
    assert shape_problems(doc) == []
    listed = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
    routes = http_routes(app)
    assert routes <= listed, routes - listed
    # and nothing else but what the guard itself answers
    assert listed - routes == {("POST", "/auth/ticket")}
    # every route is described here, not only listed
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert "x-undocumented" not in op, (method, path)
            assert (method.upper(), path) in OPERATIONS
    # every WebSocket route is in x-websockets, described
    sockets = {r.path for r in app.routes if isinstance(r, WebSocketRoute)}
    assert sockets == set(doc["x-websockets"]["paths"]) == {"/ws/ingest", "/ws/updates"}
    assert not any("x-undocumented" in s for s in doc["x-websockets"]["paths"].values())
    # nothing described that no route serves
    assert {key for key in OPERATIONS} <= listed


def test_parameters_bodies_and_security_are_described(
    make_config: Callable[..., Config],
) -> None:
    open_doc = document(app_of(make_config()))
    doc = document(app_of(make_config(), guarded=True), guarded=True)
    timeline = doc["paths"]["/streams/{stream_id}/timeline"]["get"]
    params = {p["name"]: p for p in timeline["parameters"]}
    assert params["stream_id"]["in"] == "path" and params["stream_id"]["required"]
    assert params["format"]["schema"]["enum"] == ["json", "csv"]
    assert set(timeline["responses"]["200"]["content"]) == {"application/json", "text/csv"}
    updates = doc["x-websockets"]["paths"]["/ws/updates"]
    assert {p["name"] for p in updates["parameters"]} == {"stream_id", "since", "ticket"}
    create = doc["paths"]["/streams"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": REF + "StreamRequest"
    }
    assert {"201", "400", "401", "403", "415"} <= set(create["responses"])
    classify = doc["paths"]["/classify"]["post"]
    assert {"multipart/form-data", "audio/*"} <= set(classify["requestBody"]["content"])
    assert classify["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": REF + "ClassifyAnswer"
    }
    answer = doc["components"]["schemas"]["ClassifyAnswer"]["properties"]
    assert answer["summary"] == {"$ref": REF + "StreamSummary"}
    # with tokens, guarded operations need the bearer scheme; open ones none
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for path, item in doc["paths"].items():
        for method, op in item.items():
            scope = required_scope(method.upper(), path.replace("{stream_id}", "x"))
            assert op["x-scope"] == (None if path == "/auth/ticket" else scope), (method, path)
            if scope is None:
                assert op["security"] == [], (method, path)
                assert path in OPEN_PATHS
            else:
                assert op["security"] == [{"bearer": []}], (method, path)
            # without tokens nothing asks for one
            assert "security" not in open_doc["paths"][path][method]
    assert doc["paths"]["/streams"]["get"]["x-scope"] == "read"
    assert doc["paths"]["/streams/{stream_id}"]["delete"]["x-scope"] == "admin"
    assert doc["paths"]["/classify"]["post"]["x-scope"] == "ingest"


def test_the_message_schemas_are_the_typeddicts_of_messages(
    make_config: Callable[..., Config],
) -> None:
    doc = document(app_of(make_config()))
    schemas = doc["components"]["schemas"]
    for typed in (*get_args(messages.ServerMessage), *get_args(messages.ClientMessage)):
        schema = schemas[typed.__name__]
        assert list(schema["properties"]) == list(typed.__annotations__), typed
    # NotRequired is honoured (the messages module uses postponed annotations)
    assert "name" not in schemas["StartMessage"]["required"]
    assert "stream_id" not in schemas["ErrorMessage"]["required"]
    assert schemas["GenreChange"]["properties"]["previous"] == {
        "anyOf": [{"type": "string"}, {"type": "null"}]
    }
    assert schemas["GenreUpdate"]["properties"]["top"] == {
        "type": "array",
        "items": {"$ref": REF + "LabelProb"},
    }
    assert '"speech"' in schemas["GenreUpdate"]["description"]


def _message_types(doc: dict[str, Any], key: str) -> set[str]:
    found = set()
    for sock in doc["x-websockets"]["paths"].values():
        for ref in sock[key]:
            schema = doc["components"]["schemas"][ref["$ref"].removeprefix(REF)]
            found.update(schema["properties"]["type"]["enum"])
    return found


def test_the_websocket_protocol_covers_every_message_type(
    make_config: Callable[..., Config],
) -> None:
    doc = document(app_of(make_config()))
    assert _message_types(doc, "server_messages") == messages.SERVER_TYPES
    client = {get_args(get_type_hints(t)["type"])[0] for t in get_args(messages.ClientMessage)}
    assert _message_types(doc, "client_messages") == client == {"start", "stop"}
    updates = doc["x-websockets"]["paths"]["/ws/updates"]
    updates_types = {
        doc["components"]["schemas"][r["$ref"].removeprefix(REF)]["properties"]["type"]["enum"][0]
        for r in updates["server_messages"]
    }
    assert updates_types == messages.SERVER_TYPES
    assert doc["x-websockets"]["paths"]["/ws/ingest"]["client_binary"]


# The files whose WebSocket answers the document describes.
_SOURCES = [
    "stream_server/errors.py",
    "stream_server/messages.py",
    "stream_server/serve/app.py",
    "stream_server/serve/guard.py",
    "stream_server/serve/hub.py",
    "stream_server/serve/service.py",
]


def test_every_close_and_error_code_the_server_uses_is_documented() -> None:
    text = "\n".join((ROOT / path).read_text(encoding="utf-8") for path in _SOURCES)
    close = {
        int(code)
        for pattern in (
            r"close_code(?:: int)?\s*=\s*(\d{4})",
            r"_close\(ws, (\d{4})",
            r'"code": (\d{4})',
        )
        for code in re.findall(pattern, text)
    }
    assert close and close <= set(CLOSE_CODES), close - set(CLOSE_CODES)
    errors = set(re.findall(r'\bcode(?:: str)?\s*=\s*"(\w+)"', text))
    errors |= set(re.findall(r'\berror\(\s*"(\w+)"', text))
    assert errors and errors <= set(ERROR_CODES), errors - set(ERROR_CODES)


def test_what_the_server_answers_fits_the_document(
    make_config: Callable[..., Config],
    tiny_model: LoadedModel,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Real answers of a server with tokens, each checked against the schema its document
    gives for that route and status."""
    tokens = install_tokens(monkeypatch, tmp_path)
    wav = encode_audio(tmp_path / "clip.wav", music(3.0, 22050), 22050)

    async def scenario() -> None:
        async with serving(make_config(auth=tokens), tiny_model, timeout=30) as (server, http):
            reply = await http.get("/openapi.json")  # open, though tokens are configured
            assert reply.status_code == 200
            doc = reply.json()
            assert shape_problems(doc) == []
            assert doc["paths"]["/streams"]["get"]["security"] == [{"bearer": []}]

            async def check(method: str, path: str, template: str, **kw: Any) -> Any:
                answer: httpx.Response = await http.request(method, path, **kw)
                schema = answer_schema(doc, method, template, answer.status_code)
                assert problems(answer.json(), schema, doc) == [], (path, answer.text)
                return answer.json()

            await check("GET", "/ready", "/ready")
            await check("GET", "/health", "/health")
            await check("POST", "/auth/ticket", "/auth/ticket", headers=BEARER)
            ticket = (await http.post("/auth/ticket", headers=BEARER)).json()["ticket"]
            async with ws(server, f"/ws/ingest?ticket={ticket}") as conn:
                first = await start_stream(conn, name="kept")
                await send_audio(conn, music(3.0, 44100))
                await stop_stream(conn)
            async with ws(server, f"/ws/ingest?ticket={ticket}") as conn:
                second = await start_stream(conn, name="deleted")
                await check("DELETE", f"/streams/{second}", "/streams/{stream_id}", headers=BEARER)
            listed = await check("GET", "/streams", "/streams", headers=BEARER)
            assert {s["stream_id"] for s in listed["streams"]} >= {first, second}
            timeline = await check(
                "GET",
                f"/streams/{first}/timeline",
                "/streams/{stream_id}/timeline",
                headers=BEARER,
            )
            assert timeline["segments"]
            csv = await http.get(f"/streams/{first}/timeline?format=csv", headers=BEARER)
            assert csv.headers["content-type"].startswith("text/csv")
            for path in ("/streams/nope/timeline", f"/streams/{first}/timeline?format=xml"):
                await check("GET", path, "/streams/{stream_id}/timeline", headers=BEARER)
            await check("DELETE", "/streams/nope", "/streams/{stream_id}", headers=BEARER)
            await check("GET", "/streams", "/streams")  # 401
            await check(
                "POST",
                "/classify",
                "/classify",
                headers={**BEARER, "Content-Type": "audio/wav"},
                content=wav.read_bytes(),
            )
            await check(
                "POST",
                "/streams",
                "/streams",
                headers={**BEARER, "Content-Type": "application/json"},
                content=b"{}",
            )
            await check(
                "POST", "/streams", "/streams", headers=BEARER, content=b"{}"
            )  # 415: no JSON type

    run(scenario())
