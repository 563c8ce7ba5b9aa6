"""An ingest worker process of ``genrecast serve --workers N`` (:mod:`.workers` starts them).

A whole server (:class:`~stream_server.serve.service.Service` behind uvicorn) on the shared
listening socket, whose engine is its link to the engine process
(:mod:`stream_server.serve.engine_link`). It knows the model only by its
:class:`~stream_server.inference.facts.ModelInfo`, and imports no torch: the weights, the device
and the features stay in the engine process (an upload's windows are cut by
:mod:`stream_server.inference.classify`, which brings torch in with the first file).
"""

from __future__ import annotations

import asyncio
import logging
import socket

from stream_server.config import Config
from stream_server.inference.facts import ModelInfo
from stream_server.serve.engine_link import EngineLink
from stream_server.serve.server import DrainingServer, checked_tokens, uvicorn_config
from stream_server.serve.service import Service

__all__ = ["run_worker"]


def run_worker(
    config: Config, model: ModelInfo, listen: socket.socket, link: socket.socket, index: int
) -> None:
    """An ingest worker process's main: serve on ``listen`` with the engine over ``link``;
    ``model`` describes the engine process's model (the weights stay there)."""
    logging.basicConfig(
        level=config.server.log_level.upper(),
        format=f"%(levelname)s [worker {index}] %(message)s",
    )
    asyncio.run(_worker(config, model, listen, link, index))


async def _worker(
    config: Config, model: ModelInfo, listen: socket.socket, link: socket.socket, index: int
) -> None:
    reader, writer = await asyncio.open_unix_connection(sock=link)
    engine_link = EngineLink(reader, writer, index)
    service = Service(config, model=model, link=engine_link)
    server = DrainingServer(uvicorn_config(service, checked_tokens(config)), service)

    def lost() -> None:
        server.should_exit = True

    engine_link.on_lost = lost
    reading = asyncio.create_task(engine_link.run())
    listen.setblocking(False)
    try:
        await server.serve(sockets=[listen])
    finally:
        await engine_link.close()
        reading.cancel()
        await asyncio.gather(reading, return_exceptions=True)
