"""The background consumer: ``/ws/updates`` into a :class:`DashboardState`, reconnecting itself.

One :class:`Feed` per server URL runs a daemon thread. It connects with ``since=`` the last
applied ``seq`` (``since=0`` at first, to replay the server's recent history), applies every
message under a lock and, when the connection drops or cannot be made, retries every
:data:`RETRY_S` seconds. Nothing it does raises into the page: problems become :attr:`Feed.status`
(a refused token too: the server may be given one while the feed retries). The handshake carries
the token of :func:`stream_server.tools.client.auth_headers` (``$GENRECAST_TOKEN`` unless one is
given).
"""

from __future__ import annotations

import threading
import time

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.sync.client import connect

from dashboard.state import DashboardState
from stream_server.errors import ProtocolError
from stream_server.messages import parse_server_message
from stream_server.serve.auth import READ
from stream_server.tools.client import auth_headers, refusal, ws_url

#: Seconds between two connection attempts.
RETRY_S = 1.0
#: Seconds one receive waits before checking whether the feed was stopped.
RECV_TIMEOUT_S = 0.5


class Feed:
    """Keeps a :class:`DashboardState` current from one server's ``/ws/updates``; ``token``:
    sent on the handshake (``None``: ``$GENRECAST_TOKEN``, if set)."""

    def __init__(self, server: str, token: str | None = None) -> None:
        self.server = server
        self._headers = auth_headers(token)
        self._state = DashboardState()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.connected = False
        self.status = "connecting"
        #: Unix seconds of the last message received, or ``None``.
        self.last_message_wall: float | None = None
        self._thread = threading.Thread(target=self._run, name="genrecast-feed", daemon=True)

    def start(self) -> Feed:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)

    def snapshot(self) -> DashboardState:
        """A copy of the current state."""
        with self._lock:
            return self._state.snapshot()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._follow()
            except InvalidStatus as exc:
                status = exc.response.status_code
                reason = refusal(status, exc.response.body or b"", READ, bool(self._headers))
                self.status = reason or f"the server refused the updates connection ({status})"
            except (OSError, ConnectionClosed, InvalidHandshake, InvalidURI, TimeoutError) as exc:
                self.status = f"cannot reach {self.server}: {exc or type(exc).__name__}"
            except Exception as exc:  # the thread must survive anything the network throws
                self.status = f"updates connection failed: {type(exc).__name__}: {exc}"
            self.connected = False
            self._stop.wait(RETRY_S)

    def _follow(self) -> None:
        with self._lock:
            since = self._state.last_seq if self._state.last_seq is not None else 0
            self._state.reconnected()
        url = ws_url(self.server, "/ws/updates", since=since)
        with connect(
            url,
            open_timeout=5.0,
            close_timeout=1.0,
            proxy=None,
            additional_headers=self._headers,
        ) as ws:
            self.connected = True
            self.status = "connected"
            while not self._stop.is_set():
                try:
                    raw = ws.recv(timeout=RECV_TIMEOUT_S)
                except TimeoutError:
                    continue
                try:
                    message = parse_server_message(raw)
                except ProtocolError:
                    continue
                with self._lock:
                    self._state.apply(message)
                self.last_message_wall = time.time()
