"""Tests for stream_server.serve.store: SQLite persistence of streams and timelines."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stream_server.core.records import StreamOutcome, StreamRecord, TrackTitle
from stream_server.core.summary import summarize
from stream_server.core.timeline import Segment, TimelineBuilder
from stream_server.errors import GenrecastError, StorageError
from stream_server.serve.store import SCHEMA_VERSION, TimelineStore


def record(stream_id: str, created_at: float = 1_700_000_000.0, **kw: object) -> StreamRecord:
    fields: dict[str, object] = {
        "stream_id": stream_id,
        "name": f"stream {stream_id}",
        "kind": "ws",
        "source": "127.0.0.1:5000",
        "created_at": created_at,
    }
    fields.update(kw)
    return StreamRecord(**fields)  # type: ignore[arg-type]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "dir" / "timeline.sqlite"


@pytest.fixture
def store(db_path: Path) -> Iterator[TimelineStore]:
    s = TimelineStore(db_path)
    yield s
    s.close()


def test_creates_parent_dirs_and_uses_wal(db_path: Path, store: TimelineStore) -> None:
    assert db_path.is_file()
    assert store.path == str(db_path)
    assert store.journal_mode == "wal"
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert raw.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    raw.close()


def test_stream_round_trip(store: TimelineStore) -> None:
    full = record(
        "s1",
        ended_at=None,
        sample_rate=44_100,
        channels=2,
        fmt="s16le",
    )
    minimal = record("s2", kind="file", source="/music/a.flac")
    store.add_stream(full)
    store.add_stream(minimal)
    assert store.get_stream("s1") == full
    assert store.get_stream("s2") == minimal
    assert store.get_stream("nope") is None


def test_end_stream(store: TimelineStore) -> None:
    store.add_stream(record("s1"))
    store.end_stream("s1", 1_700_000_123.5)
    got = store.get_stream("s1")
    assert got is not None
    assert got.ended_at == 1_700_000_123.5


def test_end_unknown_stream_is_a_storage_error(store: TimelineStore) -> None:
    with pytest.raises(StorageError, match=r"end_stream.*'ghost'"):
        store.end_stream("ghost", 1.0)


def test_duplicate_stream_id_is_a_storage_error(store: TimelineStore, db_path: Path) -> None:
    store.add_stream(record("s1"))
    with pytest.raises(StorageError, match="add_stream") as info:
        store.add_stream(record("s1", name="again"))
    assert str(db_path) in str(info.value)
    assert isinstance(info.value.__cause__, sqlite3.IntegrityError)
    assert isinstance(info.value, GenrecastError)
    got = store.get_stream("s1")
    assert got is not None
    assert got.name == "stream s1"
    store.add_stream(record("s2"))  # the connection is still usable after the failure


def test_list_streams_newest_first_with_limit(store: TimelineStore) -> None:
    store.add_stream(record("old", created_at=100.0))
    store.add_stream(record("new", created_at=300.0))
    store.add_stream(record("mid", created_at=200.0))
    store.add_stream(record("mid2", created_at=200.0))  # same time: later insert first
    assert [r.stream_id for r in store.list_streams()] == ["new", "mid2", "mid", "old"]
    assert [r.stream_id for r in store.list_streams(limit=2)] == ["new", "mid2"]
    assert store.list_streams(limit=0) == []
    with pytest.raises(ValueError, match="limit"):
        store.list_streams(limit=-1)


def test_timeline_round_trip_ordered_by_index(store: TimelineStore) -> None:
    store.add_stream(record("s1"))
    segs = [
        Segment(0.0, 5.0, "rock", 0.7, 3),
        Segment(5.0, 7.0, "jazz", 0.65, 2),
        Segment(7.0, 8.0, "rock", 0.4, 1),
    ]
    store.write_tail("s1", 0, segs[:1])
    store.write_tail("s1", 1, segs[1:])
    assert store.timeline("s1") == segs
    assert store.timeline("unknown") == []


def test_write_tail_stores_a_rewritten_tail_exactly(store: TimelineStore, db_path: Path) -> None:
    """Changes dated back rewrite earlier segments and merges drop some: the tails a builder
    gives, written with write_tail, hold its timeline exactly, across a reopen."""
    store.add_stream(record("s1"))
    store.add_stream(record("other"))
    store.write_tail("other", 0, [Segment(0.0, 9.0, "pop", 0.5, 9)])
    builder = TimelineBuilder(history=8)

    def write() -> None:
        tail = builder.take_changes()
        store.write_tail("s1", tail[0][0], [s for _, s in tail])

    for t in (5.0, 6.0, 7.0, 8.0):
        builder.add(t, "rock", 0.8, window_start_s=0.0)
        write()
    builder.add(9.0, "jazz", 0.6, since_s=6.5, carried=[0.6, 0.6])  # rock ends at 6.5
    write()
    assert [(s.start_s, s.end_s) for s in store.timeline("s1")] == [(0.0, 6.5), (6.5, 9.0)]
    builder.add(10.0, "rock", 0.8, since_s=6.5, carried=[0.7, 0.7, 0.7])  # jazz was rock
    write()
    assert store.timeline("s1") == builder.segments()
    assert [(s.start_s, s.end_s, s.genre) for s in store.timeline("s1")] == [(0.0, 10.0, "rock")]
    store.close()
    with TimelineStore(db_path) as again:
        assert again.timeline("s1") == builder.segments()
        assert again.timeline("other") == [Segment(0.0, 9.0, "pop", 0.5, 9)]
        again.write_tail("s1", 1, [])  # nothing after the first: unchanged
        assert len(again.timeline("s1")) == 1
        with pytest.raises(ValueError, match="index"):
            again.write_tail("s1", -1, [])
        with pytest.raises(StorageError):
            again.write_tail("unknown", 0, [Segment(0.0, 1.0, "rock", 0.5, 1)])


def test_segments_are_per_stream(store: TimelineStore) -> None:
    store.add_stream(record("a"))
    store.add_stream(record("b"))
    store.write_tail("a", 0, [Segment(0.0, 1.0, "rock", 0.5, 1)])
    store.write_tail("b", 0, [Segment(0.0, 2.0, "jazz", 0.9, 2)])
    assert [s.genre for s in store.timeline("a")] == ["rock"]
    assert [s.genre for s in store.timeline("b")] == ["jazz"]


def test_segments_of_an_unknown_stream_are_a_storage_error(store: TimelineStore) -> None:
    with pytest.raises(StorageError, match="write_tail"):
        store.write_tail("ghost", 0, [Segment(0.0, 1.0, "rock", 0.5, 1)])


def test_survives_a_restart(db_path: Path) -> None:
    first = TimelineStore(db_path)
    first.add_stream(record("s1", sample_rate=16_000, channels=1, fmt="f32le"))
    first.write_tail("s1", 0, [Segment(0.0, 3.0, "blues", 0.81, 2)])
    first.end_stream("s1", 1_700_000_050.0)
    first.close()

    second = TimelineStore(db_path)
    try:
        assert second.journal_mode == "wal"
        assert second.get_stream("s1") == record(
            "s1", ended_at=1_700_000_050.0, sample_rate=16_000, channels=1, fmt="f32le"
        )
        assert second.timeline("s1") == [Segment(0.0, 3.0, "blues", 0.81, 2)]
        second.write_tail("s1", 1, [Segment(3.0, 4.0, "jazz", 0.5, 1)])
    finally:
        second.close()
    with TimelineStore(db_path) as third:
        assert len(third.timeline("s1")) == 2


def outcome(**kw: Any) -> StreamOutcome:
    segments = [Segment(0.0, 6.0, "jazz", 0.7, 13), Segment(6.0, 8.0, "blues", 0.6, 5)]
    fields: dict[str, Any] = {
        "state": "failed",
        "reason": "source failed 3 times in a row; last: connection refused by 10.0.0.5:8000",
        "summary": summarize(segments).to_dict(),
        "stream_time_s": 8.0,
        "windows_computed": 18,
        "windows_skipped": 1,
        "genre": "blues",
        "confidence": 0.6,
        "reconnects": 2,
        "last_error": "connection refused by 10.0.0.5:8000",
        "last_error_at": 1_700_000_049.5,
    }
    fields.update(kw)
    return StreamOutcome(**fields)


def test_an_ended_stream_keeps_its_outcome_across_a_restart(db_path: Path) -> None:
    kept = outcome()
    with TimelineStore(db_path) as first:
        first.add_stream(record("s1"))
        first.add_stream(record("s2", created_at=1_700_000_001.0))
        first.end_stream("s1", 1_700_000_050.0, kept)
        first.end_stream("s2", 1_700_000_060.0)  # ended without one (a worker that died)
    with TimelineStore(db_path) as second:
        got = second.get_stream("s1")
        assert got is not None and got.outcome == kept and got.ended_at == 1_700_000_050.0
        assert got.outcome.summary["genre"] == "jazz"
        assert [r.outcome for r in second.list_streams()] == [None, kept]
        second.end_stream("s1", 1_700_000_070.0)  # no outcome given: the one kept stays
        again = second.get_stream("s1")
        assert again is not None and again.outcome == kept and again.ended_at == 1_700_000_070.0


def test_an_outcome_that_cannot_be_read_is_left_out_not_fatal(db_path: Path) -> None:
    with TimelineStore(db_path) as store:
        store.add_stream(record("s1"))
        store.end_stream("s1", 1_700_000_050.0, outcome())
    raw = sqlite3.connect(db_path)
    with raw:
        raw.execute('UPDATE streams SET outcome = \'{"no": "state"}\'')
    raw.close()
    with TimelineStore(db_path) as store:
        got = store.get_stream("s1")
        assert got is not None and got.outcome is None and got.ended_at == 1_700_000_050.0


def test_outcomes_ignore_keys_they_do_not_know() -> None:
    data = {**outcome().to_dict(), "from_a_later_version": 1}
    assert StreamOutcome.from_dict(data) == outcome()
    with pytest.raises(ValueError, match="state"):
        StreamOutcome.from_dict({"reason": "x"})


@pytest.mark.parametrize("version", [1, 2])
def test_an_older_file_gains_the_outcome_column_and_keeps_its_streams(
    tmp_path: Path, version: int
) -> None:
    path = tmp_path / "old.db"
    raw = sqlite3.connect(path)
    with raw:
        raw.executescript(
            "CREATE TABLE streams (stream_id TEXT PRIMARY KEY, name TEXT NOT NULL, kind TEXT "
            "NOT NULL, source TEXT NOT NULL, created_at REAL NOT NULL, ended_at REAL, "
            "sample_rate INTEGER, channels INTEGER, fmt TEXT);"
            "CREATE TABLE segments (stream_id TEXT NOT NULL, idx INTEGER NOT NULL, start_s REAL "
            "NOT NULL, end_s REAL NOT NULL, genre TEXT NOT NULL, confidence REAL NOT NULL, "
            "updates INTEGER NOT NULL, PRIMARY KEY (stream_id, idx)) WITHOUT ROWID;"
            "INSERT INTO streams VALUES ('old', 'old one', 'ws', 'x', 5.0, 9.0, 16000, 1, "
            "'s16le');"
            "INSERT INTO segments VALUES ('old', 0, 0.0, 4.0, 'rock', 0.9, 9);"
            f"PRAGMA user_version = {version};"
        )
    raw.close()
    # two openers at once (the ingest workers of one server): one migrates, neither fails
    opened: list[TimelineStore] = []
    errors: list[BaseException] = []

    def open_it() -> None:
        try:
            opened.append(TimelineStore(path))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in opened:
        s.close()
    assert errors == []
    with TimelineStore(path) as store:
        old = store.get_stream("old")
        assert old == StreamRecord("old", "old one", "ws", "x", 5.0, 9.0, 16000, 1, "s16le")
        assert store.timeline("old") == [Segment(0.0, 4.0, "rock", 0.9, 9)]
        store.end_stream("old", 9.0, outcome(state="ended"))
        got = store.get_stream("old")
        assert got is not None and got.outcome == outcome(state="ended")
        store.add_title("old", TrackTitle(1.0, 6.0, "A title"))  # version 2's table
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
        assert raw.execute("SELECT version FROM schema_version").fetchall() == [(3,)]
    raw.close()


def test_garbage_file_is_a_storage_error_at_open(tmp_path: Path) -> None:
    path = tmp_path / "garbage.sqlite"
    path.write_bytes(b"this is not a database, just some bytes\n" * 200)
    with pytest.raises(StorageError, match=r"open on .*garbage\.sqlite") as info:
        TimelineStore(path)
    assert isinstance(info.value.__cause__, sqlite3.DatabaseError)


def test_unopenable_path_is_a_storage_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="open on"):
        TimelineStore(tmp_path)  # a directory, not a file


def test_uncreatable_parent_is_a_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StorageError, match="open on") as info:
        TimelineStore(blocker / "sub" / "db.sqlite")
    assert isinstance(info.value.__cause__, OSError)


def test_newer_schema_is_refused(db_path: Path) -> None:
    TimelineStore(db_path).close()
    raw = sqlite3.connect(db_path)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(StorageError, match="newer"):
        TimelineStore(db_path)


def test_closed_store_raises_and_close_is_idempotent(db_path: Path) -> None:
    s = TimelineStore(db_path)
    s.close()
    s.close()
    with pytest.raises(StorageError, match="closed"):
        s.get_stream("s1")
    with pytest.raises(StorageError, match="closed"):
        s.add_stream(record("s1"))
    with pytest.raises(StorageError, match="closed"):
        _ = s.journal_mode


def test_in_memory_store() -> None:
    with TimelineStore(":memory:") as s:
        assert s.journal_mode == "memory"
        s.add_stream(record("m"))
        s.write_tail("m", 0, [Segment(0.0, 1.0, "pop", 0.5, 1)])
        assert s.timeline("m") == [Segment(0.0, 1.0, "pop", 0.5, 1)]


def test_concurrent_writers_share_one_store(store: TimelineStore) -> None:
    threads_n, per_thread = 8, 25
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            sid = f"t{k}"
            store.add_stream(record(sid, created_at=float(k)))
            for i in range(per_thread):
                store.write_tail(sid, i, [Segment(float(i), i + 1.0, "rock", 0.5, 1)])
                store.timeline(sid)
        except BaseException as exc:  # pragma: no cover - only on failure
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(store.list_streams()) == threads_n
    for k in range(threads_n):
        assert len(store.timeline(f"t{k}")) == per_thread


def test_write_tails_stores_a_batch_in_one_transaction_and_keeps_the_good_tails(
    store: TimelineStore, db_path: Path
) -> None:
    store.add_stream(record("a"))
    store.add_stream(record("b"))
    store.write_tail("a", 0, [Segment(0.0, 1.0, "rock", 0.5, 1)])
    statements: list[str] = []
    store._conn.set_trace_callback(statements.append)
    failed = store.write_tails(
        [
            ("a", 1, [Segment(1.0, 2.0, "jazz", 0.6, 1)]),
            ("unknown", 0, [Segment(0.0, 1.0, "pop", 0.5, 1)]),
            ("b", 0, [Segment(0.0, 2.0, "blues", 0.9, 2), Segment(2.0, 3.0, "pop", 0.7, 1)]),
            ("b", -1, []),
        ]
    )
    store._conn.set_trace_callback(None)
    assert [stream for stream, _ in failed] == ["unknown", "b"]
    assert "FOREIGN KEY" in failed[0][1] and "index" in failed[1][1]
    assert [s.genre for s in store.timeline("a")] == ["rock", "jazz"]
    assert [s.genre for s in store.timeline("b")] == ["blues", "pop"]
    assert store.timeline("unknown") == []
    begins = [s for s in statements if s.startswith("BEGIN")]
    commits = [s for s in statements if s.startswith("COMMIT")]
    assert len(begins) == 1 and len(commits) == 1, statements
    store.close()
    with TimelineStore(db_path) as again:  # committed
        assert [s.genre for s in again.timeline("b")] == ["blues", "pop"]
