"""A web site on a free loopback port for pull tests: fixed answers by path (404 otherwise),
answers queued for the next requests of a path, and a record of every path asked for."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


@dataclass
class Route:
    """What one path answers: a status, headers and a body."""

    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    length: bool = True  # send Content-Length; else the body ends when the connection closes


class Site:
    """An HTTP server on a free loopback port that answers fixed ``routes`` (404 otherwise) and
    records every path it was asked for in ``hits``. ``queued[path]``: answers for the next
    requests of ``path``, in order, before its route."""

    def __init__(self, routes: dict[str, Route] | None = None) -> None:
        self.routes: dict[str, Route] = dict(routes or {})
        self.queued: dict[str, list[Route]] = {}
        self.hits: list[str] = []
        lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with lock:
                    owner.hits.append(self.path)
                    waiting = owner.queued.get(self.path)
                    if waiting:
                        route = waiting.pop(0)
                    else:
                        route = owner.routes.get(self.path, Route(404, (), b"not found"))
                self.send_response(route.status)
                for name, value in route.headers:
                    self.send_header(name, value)
                if route.length:
                    self.send_header("Content-Length", str(len(route.body)))
                self.end_headers()
                self.wfile.write(route.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port: int = self.server.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
