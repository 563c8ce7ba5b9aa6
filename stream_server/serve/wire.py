"""Frames between the engine process and its ingest workers (``genrecast serve --workers N``).

One frame is a JSON header and an optional binary payload, each length-prefixed::

    >II  header bytes, payload bytes
    header  UTF-8 JSON object with an "op" key
    payload raw bytes (int16 PCM windows, float32 scores), described by the header

The two ends are the processes of one server, joined by a ``socket.socketpair`` made before the
workers start: nothing else can reach it. The limits below still bound what one frame may ask a
reader to hold, and what a writer queues for a reader that stopped reading
(:data:`MAX_PENDING_BYTES`): past it the link is given up, as a subscriber too slow for its
queue is dropped, instead of the writer's memory growing without end.
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

__all__ = [
    "MAX_HEADER_BYTES",
    "MAX_PAYLOAD_BYTES",
    "MAX_PENDING_BYTES",
    "Frame",
    "read_frame",
    "write_frame",
]

_PREFIX = struct.Struct(">II")
#: The largest header a reader accepts (a ``/streams`` answer of thousands of streams fits).
MAX_HEADER_BYTES = 64 * 1024 * 1024
#: The largest payload a reader accepts (a batch of upload windows is a few MB).
MAX_PAYLOAD_BYTES = 512 * 1024 * 1024

#: The most bytes a writer keeps queued for a reader that does not read (a worker or the engine
#: process stuck for seconds under full load queues a few MB).
MAX_PENDING_BYTES = 256 * 1024 * 1024

#: A frame as read: its header and its payload (``b""`` if none).
Frame = tuple[dict[str, Any], bytes]


def write_frame(
    writer: asyncio.StreamWriter,
    header: dict[str, Any],
    payload: bytes = b"",
    *,
    max_pending: int = MAX_PENDING_BYTES,
) -> None:
    """Queue one frame on ``writer`` without waiting.

    Raises:
        ConnectionError: more than ``max_pending`` bytes are queued already: the reader stopped
            reading (nothing is queued).
    """
    pending = writer.transport.get_write_buffer_size()
    if pending > max_pending:
        raise ConnectionError(f"{pending} bytes queued for a reader that does not read")
    head = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    writer.write(_PREFIX.pack(len(head), len(payload)) + head)
    if payload:
        writer.write(payload)


async def read_frame(reader: asyncio.StreamReader) -> Frame | None:
    """The next frame, or ``None`` when the other end closed between frames.

    Raises:
        ValueError: a length over the limits or a header that is not a JSON object.
        asyncio.IncompleteReadError: the other end closed in the middle of a frame.
    """
    try:
        prefix = await reader.readexactly(_PREFIX.size)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise
    head_len, payload_len = _PREFIX.unpack(prefix)
    if head_len > MAX_HEADER_BYTES or payload_len > MAX_PAYLOAD_BYTES:
        raise ValueError(f"frame of {head_len} + {payload_len} bytes is over the limits")
    header = json.loads(await reader.readexactly(head_len))
    if not isinstance(header, dict) or "op" not in header:
        raise ValueError("a frame header must be a JSON object with an 'op'")
    payload = await reader.readexactly(payload_len) if payload_len else b""
    return header, payload
