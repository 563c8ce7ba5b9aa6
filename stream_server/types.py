"""Shared types: aliases, and the small interfaces sources use to talk to the service.

Sources (the pulled-stream worker, the WebRTC peers) never see the service itself: a source
feeds one :class:`StreamSink`, and a source that opens its own streams asks a :class:`StreamHost`
for them. The service implements both (:mod:`stream_server.serve.service`); tests may pass their
own. Standard library and numpy only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

from stream_server.messages import StartMessage

__all__ = [
    "FloatArray",
    "SourceCounter",
    "StreamHost",
    "StreamSink",
    "StreamState",
]

#: float32 samples; shapes are given where used.
FloatArray = npt.NDArray[np.float32]

#: A stream's state: pushed streams stay ``"live"`` until they end; a pulled one moves
#: ``connecting`` → ``live`` ⇄ ``reconnecting`` → ``ended`` / ``failed``. (A cluster also
#: lists a stream whose node died without ending it as ``lost``.)
StreamState = Literal["connecting", "live", "reconnecting", "ended", "failed"]

#: Counters a source keeps on its stream (``GET /streams``): audio chunks the server could not
#: take in time, packets the decoder rejected, reconnects started.
SourceCounter = Literal["dropped", "corrupt_packets", "reconnects"]


class StreamSink(Protocol):
    """One live stream as the source feeding it sees it. Every call is made on the event loop.

    ``sample_rate`` (Hz) is the rate :meth:`feed_samples` expects; :meth:`feed` takes PCM bytes
    in the format the stream was opened with.
    """

    @property
    def stream_id(self) -> str: ...

    @property
    def ended(self) -> bool: ...

    @property
    def sample_rate(self) -> int: ...

    def feed(self, data: bytes) -> None:
        """PCM bytes in the stream's announced format."""

    def feed_samples(self, samples: FloatArray) -> None:
        """Mono samples at :attr:`sample_rate`, shape ``(n,)``, nominally in ``[-1, 1]``."""

    def title(self, title: str) -> None:
        """The source announced a new track title."""

    def gap(self, seconds: float) -> None:
        """The source was away for ``seconds`` and is back."""

    def connection_failed(self, reason: str, wall_time: float) -> None:
        """A connection to the source failed for ``reason`` (words) at ``wall_time`` (unix
        seconds): the stream's ``last_error``."""

    def set_state(self, state: StreamState) -> None:
        """The source's state changed (ignored once the stream has ended)."""

    def count(self, counter: SourceCounter, n: int = 1) -> None:
        """Add ``n`` to one of the stream's counters."""

    async def end(self, reason: str, *, drain: bool = True) -> None:
        """End the stream (after its in-flight windows when ``drain``); once."""

    def on_end(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(reason)`` when the stream ends, whoever ends it."""


class StreamHost(Protocol):
    """What a source that opens its own streams needs from the service."""

    async def open_sink(
        self, start: StartMessage, *, kind: str, source: str, client: str
    ) -> StreamSink:
        """Open a live stream (the checks and limits of any stream apply).

        Raises:
            ProtocolError: not ready, stopping, a bad format or name, or too many streams.
        """

    def count_error(self, kind: str) -> None:
        """Count one error of ``kind`` (``genrecast_errors_total{kind}``)."""
