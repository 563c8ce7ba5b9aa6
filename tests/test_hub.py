"""Tests for stream_server.serve.hub: sequence numbers, filters, resume history and slow
subscribers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from stream_server.messages import StreamEnded, StreamStarted, error
from stream_server.serve.hub import Subscriber, UpdateHub


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(test())


def started(stream_id: str, name: str = "") -> StreamStarted:
    return StreamStarted(
        type="stream.started",
        seq=0,
        stream_id=stream_id,
        name=name or stream_id,
        kind="ws",
        wall_time=1.5,
    )


def ended(stream_id: str) -> StreamEnded:
    return StreamEnded(
        type="stream.ended",
        seq=0,
        stream_id=stream_id,
        reason="stopped",
        stream_time_s=3.0,
        wall_time=2.5,
        windows_computed=1,
        windows_skipped=0,
    )


def drain(sub: Subscriber) -> list[dict[str, Any]]:
    """Everything queued for ``sub`` so far, parsed."""
    out = []
    while not sub.queue.empty():
        out.append(json.loads(sub.queue.get_nowait()))
    return out


def seqs(messages: list[dict[str, Any]]) -> list[int]:
    return [m["seq"] for m in messages]


def publish_many(hub: UpdateHub, stream_ids: list[str]) -> list[int]:
    return [json.loads(hub.publish(started(sid)))["seq"] for sid in stream_ids]


# --------------------------------------------------------------------------- publish


def test_seq_is_strictly_increasing_and_stamped() -> None:
    async def scenario() -> None:
        hub = UpdateHub(queue_size=10, history_size=10)
        assert hub.seq == 0
        msg = started("a")
        text = hub.publish(msg)
        assert msg["seq"] == 1  # stamped into the message itself
        assert json.loads(text) == {**started("a"), "seq": 1}
        assert hub.seq == 1
        more = [hub.publish(started("b")), hub.publish(ended("a")), hub.publish(started("c"))]
        assert [json.loads(t)["seq"] for t in more] == [2, 3, 4]
        assert hub.seq == 4

    run(scenario)


def test_publish_text_is_compact_json() -> None:
    async def scenario() -> None:
        hub = UpdateHub(queue_size=10, history_size=10)
        text = hub.publish(started("a"))
        assert " " not in text
        assert text.startswith('{"type":"stream.started","seq":1,')

    run(scenario)


def test_subscribers_receive_in_order_with_stream_filter() -> None:
    async def scenario() -> None:
        hub = UpdateHub(queue_size=10, history_size=10)
        every = hub.subscribe()
        only_a = hub.subscribe(stream_id="a")
        only_z = hub.subscribe(stream_id="z")
        assert hub.subscribers == 3
        publish_many(hub, ["a", "b", "a", "c", "a"])
        got_every = drain(every)
        assert seqs(got_every) == [1, 2, 3, 4, 5]
        assert [m["stream_id"] for m in got_every] == ["a", "b", "a", "c", "a"]
        got_a = drain(only_a)
        assert seqs(got_a) == [1, 3, 5]
        assert {m["stream_id"] for m in got_a} == {"a"}
        assert drain(only_z) == []

    run(scenario)


def test_subscriber_wants() -> None:
    async def scenario() -> None:
        everything = Subscriber(None, asyncio.Queue())
        one = Subscriber("a", asyncio.Queue())
        assert everything.wants("a") and everything.wants("b")
        assert one.wants("a") and not one.wants("b")
        assert not one.dropped.is_set()

    run(scenario)


def test_subscribe_without_since_gets_only_new_messages() -> None:
    async def scenario() -> None:
        hub = UpdateHub(queue_size=10, history_size=10)
        publish_many(hub, ["a", "b"])
        sub = hub.subscribe()
        assert drain(sub) == []
        publish_many(hub, ["c"])
        assert seqs(drain(sub)) == [3]

    run(scenario)


# --------------------------------------------------------------------------- history / resume


def test_history_is_bounded() -> None:
    async def scenario() -> None:
        hub = UpdateHub(queue_size=100, history_size=3)
        publish_many(hub, ["a"] * 10)
        # since=7 is still covered (8, 9, 10 kept): no gap
        assert seqs(drain(hub.subscribe(since=7))) == [8, 9, 10]
        # since=0 asks for 1..10 but only 8..10 are kept
        replay = drain(hub.subscribe(since=0))
        assert replay[0]["type"] == "error"
        assert seqs(replay[1:]) == [8, 9, 10]

    run(scenario)


@pytest.mark.parametrize("since", [0, 1, 3, 5])
def test_since_replays_exactly_the_later_messages(since: int) -> None:
    async def scenario() -> None:
        hub = UpdateHub(queue_size=10, history_size=100)
        publish_many(hub, ["a", "b", "a", "b", "a", "c"])
        sub = hub.subscribe(since=since)
        assert seqs(drain(sub)) == list(range(since + 1, 7))
        # live messages follow the replay
        publish_many(hub, ["b"])
        assert seqs(drain(sub)) == [7]

    run(scenario)


def test_since_with_stream_filter() -> None:
    async def scenario() -> None:
        hub = UpdateHub(queue_size=10, history_size=100)
        publish_many(hub, ["a", "b", "a", "b", "a", "c"])
        sub = hub.subscribe(stream_id="a", since=1)
        assert seqs(drain(sub)) == [3, 5]
        publish_many(hub, ["b", "a"])
        assert seqs(drain(sub)) == [8]
        assert drain(hub.subscribe(stream_id="zzz", since=0)) == []

    run(scenario)


def test_since_current_seq_replays_nothing() -> None:
    async def scenario() -> None:
        hub = UpdateHub(queue_size=10, history_size=10)
        publish_many(hub, ["a", "b"])
        assert drain(hub.subscribe(since=2)) == []

    run(scenario)


def test_since_in_the_future_replays_nothing() -> None:
    async def scenario() -> None:
        hub = UpdateHub(queue_size=10, history_size=2)
        publish_many(hub, ["a", "b", "c", "d"])
        sub = hub.subscribe(since=100)
        assert drain(sub) == []
        publish_many(hub, ["e"])
        assert seqs(drain(sub)) == [5]

    run(scenario)


def test_since_on_an_empty_hub() -> None:
    async def scenario() -> None:
        hub = UpdateHub(queue_size=10, history_size=10)
        assert drain(hub.subscribe(since=0)) == []
        assert drain(hub.subscribe(since=5)) == []

    run(scenario)


def test_since_older_than_history_reports_resume_gap_first() -> None:
    async def scenario() -> None:
        hub = UpdateHub(queue_size=10, history_size=3)
        publish_many(hub, ["a", "b", "a", "b", "a", "b"])  # kept: 4, 5, 6
        sub = hub.subscribe(since=1)
        replay = drain(sub)
        gap = replay[0]
        assert gap["type"] == "error"
        assert gap["code"] == "resume_gap"
        assert "2..3" in gap["message"]
        assert "resuming from 4" in gap["message"]
        assert "seq" not in gap
        assert seqs(replay[1:]) == [4, 5, 6]

    run(scenario)


def test_resume_gap_with_stream_filter() -> None:
    async def scenario() -> None:
        hub = UpdateHub(queue_size=10, history_size=3)
        publish_many(hub, ["a", "b", "a", "b", "a", "b"])  # kept: 4(b), 5(a), 6(b)
        replay = drain(hub.subscribe(stream_id="a", since=0))
        assert replay[0]["code"] == "resume_gap"
        assert seqs(replay[1:]) == [5]

    run(scenario)


def test_since_exactly_at_the_edge_of_history_has_no_gap() -> None:
    async def scenario() -> None:
        hub = UpdateHub(queue_size=10, history_size=3)
        publish_many(hub, ["a"] * 6)  # kept: 4, 5, 6
        assert seqs(drain(hub.subscribe(since=3))) == [4, 5, 6]
        replay = drain(hub.subscribe(since=2))
        assert replay[0]["code"] == "resume_gap"
        assert "3..3" in replay[0]["message"]

    run(scenario)


def test_negative_since_replays_everything_without_a_gap() -> None:
    async def scenario() -> None:
        hub = UpdateHub(queue_size=10, history_size=10)
        publish_many(hub, ["a", "b", "c"])
        replay = drain(hub.subscribe(since=-1))
        assert [m["type"] for m in replay] == ["stream.started"] * 3
        assert seqs(replay) == [1, 2, 3]

    run(scenario)


def test_replay_larger_than_queue_size_fits() -> None:
    async def scenario() -> None:
        hub = UpdateHub(queue_size=2, history_size=100)
        publish_many(hub, ["a"] * 10)
        sub = hub.subscribe(since=0)
        assert sub.queue.maxsize == 2 + 10
        assert seqs(drain(sub)) == list(range(1, 11))
        assert not sub.dropped.is_set()

    run(scenario)


# --------------------------------------------------------------------------- slow subscribers


def test_full_queue_drops_only_that_subscriber() -> None:
    async def scenario() -> None:
        dropped: list[Subscriber] = []
        hub = UpdateHub(queue_size=2, history_size=100, on_drop=dropped.append)
        slow = hub.subscribe()
        fast = hub.subscribe()
        received: list[dict[str, Any]] = []
        for i in range(5):
            publish_many(hub, [f"s{i}"])
            received += drain(fast)  # the healthy subscriber keeps up
        assert seqs(received) == [1, 2, 3, 4, 5]
        assert slow.dropped.is_set()
        assert not fast.dropped.is_set()
        assert dropped == [slow]  # reported once
        assert hub.subscribers == 1
        # the slow one got what fitted and nothing after it was dropped
        assert seqs(drain(slow)) == [1, 2]
        publish_many(hub, ["later"])
        assert drain(slow) == []
        assert seqs(drain(fast)) == [6]

    run(scenario)


def test_drop_without_callback() -> None:
    async def scenario() -> None:
        hub = UpdateHub(queue_size=1, history_size=10)
        sub = hub.subscribe()
        publish_many(hub, ["a", "b"])
        assert sub.dropped.is_set()
        assert hub.subscribers == 0

    run(scenario)


def test_dropped_event_wakes_a_waiter() -> None:
    async def scenario() -> None:
        hub = UpdateHub(queue_size=1, history_size=10)
        sub = hub.subscribe()
        waiter = asyncio.create_task(sub.dropped.wait())
        publish_many(hub, ["a", "b"])
        assert await asyncio.wait_for(waiter, 5.0) is True

    run(scenario)


def test_filtered_subscriber_is_not_dropped_by_other_streams() -> None:
    async def scenario() -> None:
        hub = UpdateHub(queue_size=1, history_size=10)
        sub = hub.subscribe(stream_id="a")
        publish_many(hub, ["b"] * 5)
        assert not sub.dropped.is_set()
        publish_many(hub, ["a"])
        assert seqs(drain(sub)) == [6]

    run(scenario)


def test_notify_can_drop_a_full_subscriber() -> None:
    async def scenario() -> None:
        dropped: list[Subscriber] = []
        hub = UpdateHub(queue_size=1, history_size=10, on_drop=dropped.append)
        sub = hub.subscribe()
        publish_many(hub, ["a"])
        hub.notify(error("inference", "boom", "a"))
        assert dropped == [sub]
        assert sub.dropped.is_set()

    run(scenario)


# --------------------------------------------------------------------------- notify / unsubscribe


def test_notify_reaches_matching_subscribers_and_is_not_kept() -> None:
    async def scenario() -> None:
        hub = UpdateHub(queue_size=10, history_size=10)
        every = hub.subscribe()
        only_a = hub.subscribe(stream_id="a")
        only_b = hub.subscribe(stream_id="b")
        hub.notify(error("inference", "inference failed", "a"))
        expected = {"type": "error", "code": "inference", "message": "inference failed"}
        assert drain(every) == [{**expected, "stream_id": "a"}]
        assert drain(only_a) == [{**expected, "stream_id": "a"}]
        assert drain(only_b) == []
        assert hub.seq == 0  # not a published message
        assert drain(hub.subscribe(since=0)) == []  # and not in the history

    run(scenario)


def test_notify_without_stream_reaches_everyone() -> None:
    async def scenario() -> None:
        hub = UpdateHub(queue_size=10, history_size=10)
        subs = [hub.subscribe(), hub.subscribe(stream_id="a"), hub.subscribe(stream_id="b")]
        hub.notify(error("shutdown", "server stopping"))
        for sub in subs:
            assert drain(sub) == [
                {"type": "error", "code": "shutdown", "message": "server stopping"}
            ]

    run(scenario)


def test_unsubscribe() -> None:
    async def scenario() -> None:
        hub = UpdateHub(queue_size=10, history_size=10)
        sub = hub.subscribe()
        other = hub.subscribe()
        hub.unsubscribe(sub)
        assert hub.subscribers == 1
        publish_many(hub, ["a"])
        hub.notify(error("x", "y"))
        assert drain(sub) == []
        assert len(drain(other)) == 2
        hub.unsubscribe(sub)  # twice is harmless
        assert hub.subscribers == 1
        assert not sub.dropped.is_set()

    run(scenario)
