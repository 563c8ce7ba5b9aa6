"""Running the app on uvicorn, from the command line or inside another event loop (tests, benches).

The listening socket is bound and put in listening state before uvicorn starts, so the real port
is known at once (``port = 0`` picks a free one) and early clients wait in the backlog instead of
being refused. WebSockets are served by uvicorn's ``websockets-sansio`` protocol: the
``websockets`` library's own sans-I/O state machine with flow control on writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import uvicorn

from stream_server.config import Config
from stream_server.errors import ConfigError
from stream_server.serve.app import configured_tokens, create_app
from stream_server.serve.auth import Tokens, exposure_problem
from stream_server.serve.http_timeouts import header_timeout_protocol
from stream_server.serve.listen import bind
from stream_server.serve.service import Service

if TYPE_CHECKING:
    from stream_server.inference.model import LoadedModel

#: Room above ``server.max_frame_bytes`` before the protocol layer itself refuses a frame.
_FRAME_HEADROOM_BYTES = 64 * 1024

#: Seconds a kept-alive connection may idle between requests. Longer than the idle expiry of
#: common clients' pools (httpx: 5 s), so that a client never sends a request on a connection
#: the server is closing at that instant (at 5 s against 5 s, an httpx client now and then got a
#: read error for a request sent 5 s after its previous one).
KEEP_ALIVE_S = 15


def uvicorn_config(service: Service, tokens: Tokens) -> uvicorn.Config:
    """uvicorn's settings for ``service``.

    HTTP is uvicorn's h11 protocol with a deadline on each request head
    (``server.header_timeout_s``, :mod:`stream_server.serve.http_timeouts`); a kept-alive connection
    may idle ``timeout_keep_alive`` seconds between requests. There is deliberately no
    ``limit_concurrency``: uvicorn counts WebSocket subscribers and pushing clients in it, and
    only checks it once a request head is in, so it would refuse legitimate clients while doing
    nothing against connections that never finish a head; those are bounded by the deadline.
    """
    cfg = service.config.server
    return uvicorn.Config(
        create_app(service, tokens),
        http=header_timeout_protocol(cfg.header_timeout_s),
        timeout_keep_alive=KEEP_ALIVE_S,
        ws="websockets-sansio",
        ws_max_size=cfg.max_frame_bytes + _FRAME_HEADROOM_BYTES,
        ws_per_message_deflate=False,
        lifespan="on",
        log_level=cfg.log_level,
        timeout_graceful_shutdown=5,
    )


@dataclass
class RunningServer:
    """A server started by :func:`running_server`."""

    service: Service
    host: str
    port: int
    task: asyncio.Task[None]

    async def wait_closed(self) -> None:
        """Wait until uvicorn stops (Ctrl-C / SIGTERM, which it handles itself)."""
        await asyncio.shield(self.task)

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"


class DrainingServer(uvicorn.Server):
    """uvicorn, with the service drained (:meth:`Service.drain`) after it stops accepting and
    before it closes connections, so subscribers get every ``stream.ended``."""

    def __init__(self, config: uvicorn.Config, service: Service) -> None:
        super().__init__(config)
        self.service = service

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()  # stop accepting first
        await self.service.drain()
        await super().shutdown(sockets)


def checked_tokens(config: Config) -> Tokens:
    """The configured tokens, once it is sure the server may listen where ``config`` says.

    Raises:
        ConfigError: a token cannot be read (``auth.*``), or ``server.host`` is not loopback
            while no token is configured and ``server.insecure`` is off.
    """
    tokens = configured_tokens(config)
    problem = exposure_problem(config.server.host, tokens, config.server.insecure)
    if problem is not None:
        raise ConfigError("server.host", problem)
    return tokens


@contextlib.asynccontextmanager
async def running_server(
    config: Config,
    *,
    model: LoadedModel | None = None,
    wait_ready: bool = True,
    sock: socket.socket | None = None,
) -> AsyncIterator[RunningServer]:
    """Serve ``config`` on its host and port (0 for a free one) in the current event loop.

    ``sock``: the listening socket, bound already (:func:`~stream_server.serve.listen.listen_on`,
    as ``genrecast serve`` does before the model loads); ``None`` binds one here. It is closed
    with the server either way.

    Raises:
        ConfigError: a token cannot be read (``auth.*``), or ``server.host`` is not loopback
            while no token is configured and ``server.insecure`` is off.
        ClusterError: a cluster node cannot log in to NATS or open the cluster's buckets.
    """
    try:
        tokens = checked_tokens(config)
        service = Service(config, model=model)
        if sock is None:
            sock = bind(config.server.host, config.server.port)
        await service.open_cluster()  # a node that cannot log in to NATS says so and stops
    except BaseException:
        if sock is not None:
            sock.close()
        raise
    port = sock.getsockname()[1]
    server = DrainingServer(uvicorn_config(service, tokens), service)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        started = asyncio.create_task(service.started.wait())
        await asyncio.wait({started, task}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            started.cancel()
            task.result()
            raise RuntimeError("the server stopped during start-up")
        if wait_ready:
            await service.wait_ready()
        yield RunningServer(service, config.server.host, port, task)
    finally:
        server.should_exit = True
        await task
        sock.close()


def serve(
    config: Config, *, model: LoadedModel | None = None, sock: socket.socket | None = None
) -> None:
    """Run the server until interrupted (Ctrl-C / SIGTERM); says where once it is ready.
    ``sock``: the listening socket, bound already (see :func:`running_server`)."""

    async def main() -> None:
        async with running_server(config, model=model, sock=sock) as server:
            print(
                f"genrecast ready on {server.http_url}  (updates: {server.ws_url}/ws/updates)",
                flush=True,
            )
            await server.wait_closed()

    asyncio.run(main())
