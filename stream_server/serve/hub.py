"""Fan-out of published messages to subscribers, with sequence numbers and a resume history.

:meth:`UpdateHub.publish` stamps each message with the next ``seq`` (strictly increasing,
server-wide), keeps it in a bounded history and puts it, already serialised, into every matching
subscriber's bounded queue without waiting. A subscriber whose queue is full is too slow: it is
marked dropped and its ``dropped`` event is set, so its connection handler closes it; nobody else
waits for it. :meth:`UpdateHub.subscribe` with ``since`` replays the history after that ``seq``.

Everything here runs on the event loop thread; nothing blocks.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from stream_server.messages import ErrorMessage, PublishedMessage, dumps, error


@dataclass(eq=False)
class Subscriber:
    """One ``/ws/updates`` client: a queue of JSON texts and a filter on ``stream_id``."""

    stream_id: str | None
    queue: asyncio.Queue[str]
    dropped: asyncio.Event = field(default_factory=asyncio.Event)

    def wants(self, stream_id: str) -> bool:
        return self.stream_id is None or self.stream_id == stream_id


class UpdateHub:
    """Publishes messages to subscribers; see the module docstring."""

    def __init__(
        self,
        queue_size: int,
        history_size: int,
        *,
        on_drop: Callable[[Subscriber], None] | None = None,
    ) -> None:
        self.queue_size = queue_size
        self._history: deque[tuple[int, str, str]] = deque(maxlen=history_size)
        self._subscribers: set[Subscriber] = set()
        self._seq = 0
        self._on_drop = on_drop

    @property
    def seq(self) -> int:
        """The ``seq`` of the last published message (0 before any)."""
        return self._seq

    @property
    def oldest(self) -> int:
        """The ``seq`` of the oldest kept message (``seq + 1`` while none is kept)."""
        return self._history[0][0] if self._history else self._seq + 1

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    @property
    def backlog(self) -> int:
        """Messages queued to subscribers and not yet sent."""
        return sum(sub.queue.qsize() for sub in self._subscribers)

    def publish(self, message: PublishedMessage) -> str:
        """Stamp ``message['seq']``, record it and queue it to subscribers; returns its JSON."""
        message["seq"] = self._seq + 1
        text = dumps(message)
        self.deliver(message["seq"], message["stream_id"], text)
        return text

    def deliver(self, seq: int, stream_id: str, text: str) -> None:
        """Record and queue a message another process stamped with ``seq`` (an ingest worker's
        hub: the engine process stamps every worker's messages, in one order)."""
        self._seq = seq
        self._history.append((seq, stream_id, text))
        for sub in list(self._subscribers):
            if sub.wants(stream_id):
                self._offer(sub, text)

    def notify(self, message: ErrorMessage) -> None:
        """Send an ``error`` to the subscribers of its stream (all, if it names none); not kept."""
        self.notify_text(message.get("stream_id"), dumps(message))

    def notify_text(self, stream_id: str | None, text: str) -> None:
        """:meth:`notify` of a message already serialised."""
        for sub in list(self._subscribers):
            if stream_id is None or sub.wants(stream_id):
                self._offer(sub, text)

    def _offer(self, sub: Subscriber, text: str) -> None:
        try:
            sub.queue.put_nowait(text)
        except asyncio.QueueFull:
            self._subscribers.discard(sub)
            sub.dropped.set()
            if self._on_drop is not None:
                self._on_drop(sub)

    def subscribe(
        self,
        stream_id: str | None = None,
        since: int | None = None,
        first: Sequence[str] = (),
    ) -> Subscriber:
        """Register a subscriber; with ``since``, first queue every kept message after that seq.

        If messages after ``since`` were already evicted from the history, an ``error`` message
        with code ``resume_gap`` comes first, then the oldest kept ones. ``first``: texts queued
        before all of that (older messages read from elsewhere, up to ``since``).
        """
        replay: list[str] = list(first)
        if since is not None:
            since = max(since, 0)  # seqs start at 1: anything below 0 means "from the start"
            oldest = self.oldest
            if since + 1 < oldest and since < self._seq:
                gap: ErrorMessage = error(
                    "resume_gap",
                    f"messages {since + 1}..{oldest - 1} are no longer kept; "
                    f"resuming from {oldest}",
                )
                replay.append(dumps(gap))
            replay += [
                text
                for seq, sid, text in self._history
                if seq > since and (stream_id is None or sid == stream_id)
            ]
        sub = Subscriber(stream_id, asyncio.Queue(maxsize=self.queue_size + len(replay)))
        for text in replay:
            sub.queue.put_nowait(text)
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subscribers.discard(sub)
