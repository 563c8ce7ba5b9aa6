"""Retention: streams that ended more than ``storage.retention_days`` ago are deleted with their
segments and titles, in the store and by a running server; live and recent streams stay."""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from stream_server.config import Config, config_from_dict
from stream_server.core.records import StreamRecord, TrackTitle
from stream_server.core.timeline import Segment
from stream_server.errors import ConfigError
from stream_server.inference.model import LoadedModel
from stream_server.serve.store import TimelineStore
from tests.helpers.constants import TIMEOUT_S
from tests.helpers.live import run, serving, stream_ids

DAY_S = 86400.0


def add(store: TimelineStore, stream_id: str, *, created_at: float, ended_at: float | None) -> None:
    """A stream with two segments and a title; ``ended_at`` ``None``: still live."""
    store.add_stream(
        StreamRecord(stream_id, f"stream {stream_id}", "ws", "127.0.0.1:5000", created_at)
    )
    store.write_tail(
        stream_id,
        0,
        [Segment(0.0, 10.0, "jazz", 0.8, 10), Segment(10.0, 20.0, "rock", 0.7, 10)],
    )
    store.add_title(stream_id, TrackTitle(1.0, created_at + 1.0, f"Artist - {stream_id}"))
    if ended_at is not None:
        store.end_stream(stream_id, ended_at)


def rows_by_stream(path: Path) -> dict[str, tuple[int, int]]:
    """Read straight from the file: each stream's ``(segments, titles)`` counts."""
    with sqlite3.connect(path) as db:
        ids = [row[0] for row in db.execute("SELECT stream_id FROM streams")]
        counts = {
            stream_id: (
                db.execute(
                    "SELECT COUNT(*) FROM segments WHERE stream_id = ?", (stream_id,)
                ).fetchone()[0],
                db.execute(
                    "SELECT COUNT(*) FROM titles WHERE stream_id = ?", (stream_id,)
                ).fetchone()[0],
            )
            for stream_id in ids
        }
        orphans = db.execute(
            "SELECT (SELECT COUNT(*) FROM segments WHERE stream_id NOT IN "
            "(SELECT stream_id FROM streams)) + (SELECT COUNT(*) FROM titles WHERE stream_id "
            "NOT IN (SELECT stream_id FROM streams))"
        ).fetchone()[0]
    db.close()
    assert orphans == 0, "segments or titles left without their stream"
    return counts


def populate(path: Path, now: float) -> None:
    """Two streams ended 40 and 31 days ago, one ended yesterday, one live since 90 days ago."""
    with TimelineStore(path) as store:
        add(store, "old", created_at=now - 41 * DAY_S, ended_at=now - 40 * DAY_S)
        add(store, "older", created_at=now - 32 * DAY_S, ended_at=now - 31 * DAY_S)
        add(store, "recent", created_at=now - 2 * DAY_S, ended_at=now - 1 * DAY_S)
        add(store, "live", created_at=now - 90 * DAY_S, ended_at=None)


@pytest.mark.parametrize(
    ("value", "needle"),
    [(-1.0, ">= 0"), (math.inf, ">= 0"), (math.nan, ">= 0"), ("30", "expected a number")],
)
def test_retention_days_must_be_a_finite_number_of_days(value: object, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"storage": {"retention_days": value}})
    assert info.value.key == "storage.retention_days"
    assert needle in str(info.value)


def test_retention_days_defaults_to_30_and_takes_0_and_fractions() -> None:
    assert config_from_dict({}).storage.retention_days == 30.0
    assert config_from_dict({"storage": {"retention_days": 0}}).storage.retention_days == 0.0
    assert config_from_dict({"storage": {"retention_days": 0.25}}).storage.retention_days == 0.25


# -- the store ---------------------------------------------------------------------------------


def test_prune_deletes_old_ended_streams_with_their_segments_and_titles(tmp_path: Path) -> None:
    path = tmp_path / "timeline.db"
    now = time.time()
    populate(path, now)
    assert set(rows_by_stream(path)) == {"old", "older", "recent", "live"}

    with TimelineStore(path) as store:
        assert store.prune(now - 30 * DAY_S) == 2
        assert store.get_stream("old") is None
        assert store.timeline("old") == [] and store.titles("old") == []
        assert len(store.timeline("recent")) == 2 and len(store.titles("recent")) == 1
        live = store.get_stream("live")
        assert live is not None and live.ended_at is None
        assert len(store.timeline("live")) == 2
    # what the file holds after the store is closed
    assert rows_by_stream(path) == {"recent": (2, 1), "live": (2, 1)}


def test_prune_is_idempotent_and_never_touches_live_streams(tmp_path: Path) -> None:
    path = tmp_path / "timeline.db"
    now = time.time()
    populate(path, now)
    with TimelineStore(path) as store:
        assert store.prune(now - 30 * DAY_S) == 2
        assert store.prune(now - 30 * DAY_S) == 0
        assert store.prune(now + DAY_S) == 1  # every ended stream, however recent...
        assert store.prune(now + DAY_S) == 0
        assert [r.stream_id for r in store.list_streams()] == ["live"]  # ...but not a live one
    assert rows_by_stream(path) == {"live": (2, 1)}


def test_prune_refuses_nan(tmp_path: Path) -> None:
    with TimelineStore(tmp_path / "timeline.db") as store, pytest.raises(ValueError, match="NaN"):
        store.prune(float("nan"))


# -- a running server ------------------------------------------------------------------------------


def streams_after_start(config: Config, model: LoadedModel) -> tuple[set[str], Path]:
    """Fill ``config``'s database with :func:`populate`, start a server on it (it prunes at
    start): the ids ``GET /streams`` lists, and the database's path."""
    path = Path(config.storage.database)
    populate(path, time.time())

    async def scenario() -> set[str]:
        async with serving(config, model, timeout=TIMEOUT_S) as (_, http):
            return await stream_ids(http)

    return run(scenario()), path


def test_server_prunes_old_ended_streams_at_start(
    make_config: Callable[..., Config],
    tiny_model: LoadedModel,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = make_config()  # storage.retention_days: the default, 30
    caplog.set_level(logging.INFO, logger="stream_server.serve.service")
    listed, path = streams_after_start(config, tiny_model)
    assert listed == {"recent", "live"}  # "live" was left open by a crash: ended at start
    assert set(rows_by_stream(path)) == {"recent", "live"}
    assert any("pruned 2 stream" in r.getMessage() for r in caplog.records), caplog.text


def test_server_keeps_every_stream_with_retention_zero(
    make_config: Callable[..., Config], tiny_model: LoadedModel
) -> None:
    config = make_config(storage={"retention_days": 0})
    listed, path = streams_after_start(config, tiny_model)
    assert listed == {"old", "older", "recent", "live"}
    assert rows_by_stream(path) == {s: (2, 1) for s in ("old", "older", "recent", "live")}


def test_server_retention_is_in_days(
    make_config: Callable[..., Config], tiny_model: LoadedModel
) -> None:
    """A shorter retention (0.5 days) also takes yesterday's stream."""
    config = make_config(storage={"retention_days": 0.5})
    listed, path = streams_after_start(config, tiny_model)
    assert listed == {"live"}
    assert set(rows_by_stream(path)) == {"live"}
