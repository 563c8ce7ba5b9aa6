"""SQLite persistence of streams and their genre timelines.

One database file holds every stream the server has seen and the timeline segments of each, so
timelines survive a restart. The file is opened in WAL mode with ``synchronous=NORMAL``; one
connection is shared by all threads and guarded by a lock. Every public method is short and
synchronous; the server calls them from a worker thread.

Times: ``created_at`` / ``ended_at`` are wall-clock unix seconds; segment ``start_s`` / ``end_s``
are seconds of stream time, and so is a title's ``stream_time_s`` (its ``wall_time`` is unix
seconds).

A stream's :class:`~stream_server.core.records.StreamOutcome` (how it ended, its summary) is kept
as JSON in its row when it ends, so listing ended streams reads no timeline.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from stream_server.core.records import StreamOutcome, StreamRecord, Tail, TrackTitle
from stream_server.core.timeline import Segment
from stream_server.errors import StorageError

__all__ = ["SCHEMA_VERSION", "TimelineStore"]

log = logging.getLogger(__name__)

#: Schema version stored in ``PRAGMA user_version`` and in the ``schema_version`` table.
#: Version 2 added the ``titles`` table, version 3 the ``outcome`` column of ``streams`` (an
#: older file gains them when opened).
SCHEMA_VERSION = 3

_MEMORY = ":memory:"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS streams (
    stream_id   TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    kind        TEXT NOT NULL,
    source      TEXT NOT NULL,
    created_at  REAL NOT NULL,
    ended_at    REAL,
    sample_rate INTEGER,
    channels    INTEGER,
    fmt         TEXT,
    outcome     TEXT
);
CREATE INDEX IF NOT EXISTS streams_created_at ON streams (created_at);
CREATE TABLE IF NOT EXISTS segments (
    stream_id  TEXT NOT NULL REFERENCES streams (stream_id) ON DELETE CASCADE,
    idx        INTEGER NOT NULL,
    start_s    REAL NOT NULL,
    end_s      REAL NOT NULL,
    genre      TEXT NOT NULL,
    confidence REAL NOT NULL,
    updates    INTEGER NOT NULL,
    PRIMARY KEY (stream_id, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS titles (
    stream_id     TEXT NOT NULL REFERENCES streams (stream_id) ON DELETE CASCADE,
    stream_time_s REAL NOT NULL,
    wall_time     REAL NOT NULL,
    title         TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS titles_stream ON titles (stream_id, stream_time_s);
"""

_STREAM_COLUMNS = (
    "stream_id, name, kind, source, created_at, ended_at, sample_rate, channels, fmt, outcome"
)


_StreamRow = tuple[
    str, str, str, str, float, float | None, int | None, int | None, str | None, str | None
]


def _record_from_row(row: _StreamRow) -> StreamRecord:
    stream_id, name, kind, source, created_at, ended_at, rate, channels, fmt, outcome = row
    return StreamRecord(
        stream_id,
        name,
        kind,
        source,
        created_at,
        ended_at,
        rate,
        channels,
        fmt,
        _outcome_from_json(stream_id, outcome),
    )


def _outcome_from_json(stream_id: str, text: str | None) -> StreamOutcome | None:
    """The outcome stored as JSON; ``None`` when there is none, or when it cannot be read
    (logged: the stream is listed without it rather than not at all)."""
    if text is None:
        return None
    try:
        return StreamOutcome.from_dict(json.loads(text))
    except (ValueError, TypeError) as exc:
        log.warning("stream %s: its stored outcome cannot be read: %s", stream_id, exc)
        return None


def _outcome_json(outcome: StreamOutcome | None) -> str | None:
    return None if outcome is None else json.dumps(outcome.to_dict(), separators=(",", ":"))


class TimelineStore:
    """Streams and timelines in one SQLite file, safe to share between threads.

    ``path`` may be ``":memory:"`` (tests; nothing survives :meth:`close`, and the journal mode
    is ``"memory"`` rather than ``"wal"``). Every :mod:`sqlite3` error is raised as
    :class:`~stream_server.errors.StorageError` naming the file and the operation. The store is
    also a context manager that closes itself on exit.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """Open (creating if needed) the database at ``path`` and its parent directories.

        Raises:
            StorageError: the directory cannot be created, the file is not a SQLite database
                (or is corrupt), or its schema is newer than this code understands.
        """
        self._path = os.fspath(path)
        self._lock = threading.Lock()
        self._closed = False
        if self._path != _MEMORY:
            try:
                Path(self._path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StorageError(f"open on {self._path!r} failed: {exc}") from exc
        try:
            self._conn = sqlite3.connect(self._path, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StorageError(f"open on {self._path!r} failed: {exc}") from exc
        try:
            self._init_schema()
        except BaseException:
            self._conn.close()
            self._closed = True
            raise

    def _init_schema(self) -> None:
        with self._op("open"):
            conn = self._conn
            conn.execute("PRAGMA busy_timeout = 5000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version > SCHEMA_VERSION:
                raise StorageError(
                    f"open on {self._path!r} failed: schema version {version} is newer than "
                    f"the supported version {SCHEMA_VERSION}"
                )
            if version < SCHEMA_VERSION:
                self._migrate(conn)

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        """Bring an older (or new, empty) file to :data:`SCHEMA_VERSION` in one transaction,
        taken for writing before the version is read again: a failure leaves the file
        untouched, and of two processes that open one old file at once (the ingest workers)
        the second finds the work done."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version < SCHEMA_VERSION:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                columns = {row[1] for row in conn.execute("PRAGMA table_info(streams)")}
                if "outcome" not in columns:  # a version 1 or 2 file
                    conn.execute("ALTER TABLE streams ADD COLUMN outcome TEXT")
                conn.execute("DELETE FROM schema_version")
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @contextmanager
    def _op(self, operation: str) -> Iterator[sqlite3.Connection]:
        """Hold the lock for one operation; turn sqlite errors into :class:`StorageError`.

        Writers nest ``with conn:`` inside, which commits, or rolls back before the error
        reaches this wrapper.
        """
        with self._lock:
            if self._closed:
                raise StorageError(f"{operation} on {self._path!r} failed: the store is closed")
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise StorageError(f"{operation} on {self._path!r} failed: {exc}") from exc

    @property
    def path(self) -> str:
        """The database path as given (``":memory:"`` for an in-memory store)."""
        return self._path

    @property
    def journal_mode(self) -> str:
        """SQLite journal mode in effect, lower case (``"wal"`` for a file database)."""
        with self._op("journal_mode") as conn:
            (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
        return str(mode).lower()

    def add_stream(self, record: StreamRecord) -> None:
        """Insert a new stream.

        Raises:
            StorageError: a stream with the same id exists, or the write failed.
        """
        with self._op("add_stream") as conn, conn:
            conn.execute(
                f"INSERT INTO streams ({_STREAM_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.stream_id,
                    record.name,
                    record.kind,
                    record.source,
                    record.created_at,
                    record.ended_at,
                    record.sample_rate,
                    record.channels,
                    record.fmt,
                    _outcome_json(record.outcome),
                ),
            )

    def end_open_streams(self, ended_at: float) -> int:
        """Mark every stream not yet ended as ended at ``ended_at`` (a previous run stopped
        without ending them); how many.

        Raises:
            StorageError: the write failed.
        """
        with self._op("end_open_streams") as conn, conn:
            cur = conn.execute(
                "UPDATE streams SET ended_at = ? WHERE ended_at IS NULL", (ended_at,)
            )
            return cur.rowcount

    def end_stream(
        self, stream_id: str, ended_at: float, outcome: StreamOutcome | None = None
    ) -> None:
        """Mark a stream as ended at ``ended_at`` (wall-clock unix seconds), keeping ``outcome``
        with it (``None``: the outcome it has, if any, stays).

        Raises:
            StorageError: no such stream, or the write failed.
        """
        with self._op("end_stream") as conn, conn:
            cur = conn.execute(
                "UPDATE streams SET ended_at = ?, outcome = COALESCE(?, outcome) "
                "WHERE stream_id = ?",
                (ended_at, _outcome_json(outcome), stream_id),
            )
            if cur.rowcount == 0:
                raise StorageError(
                    f"end_stream on {self._path!r} failed: no stream with id {stream_id!r}"
                )

    def get_stream(self, stream_id: str) -> StreamRecord | None:
        """The stream with this id, or ``None``."""
        with self._op("get_stream") as conn:
            row = conn.execute(
                f"SELECT {_STREAM_COLUMNS} FROM streams WHERE stream_id = ?", (stream_id,)
            ).fetchone()
        return None if row is None else _record_from_row(row)

    def list_streams(self, limit: int = 100) -> list[StreamRecord]:
        """Up to ``limit`` (>= 0) streams, newest ``created_at`` first (ties: newest insert first).

        Raises:
            ValueError: ``limit`` is negative.
        """
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit!r}")
        with self._op("list_streams") as conn:
            rows = conn.execute(
                f"SELECT {_STREAM_COLUMNS} FROM streams "
                "ORDER BY created_at DESC, rowid DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [_record_from_row(row) for row in rows]

    def write_tail(self, stream_id: str, index: int, segments: Sequence[Segment]) -> None:
        """Make ``segments`` the stream's timeline from segment number ``index`` on.

        In one transaction: every stored segment at ``index`` or after is dropped, then
        ``segments`` are written at ``index``, ``index + 1``, ... So a live timeline whose tail
        was rewritten (a change dated back, two segments merged) is stored exactly, and a crash
        leaves either the old tail or the new one.

        Raises:
            ValueError: ``index`` is negative.
            StorageError: the stream does not exist, or the write failed.
        """
        if index < 0:
            raise ValueError(f"index must be >= 0, got {index!r}")
        with self._op("write_tail") as conn, conn:
            self._replace_tail(conn, stream_id, index, segments)

    @staticmethod
    def _replace_tail(
        conn: sqlite3.Connection, stream_id: str, index: int, segments: Sequence[Segment]
    ) -> None:
        """The statements of :meth:`write_tail`, in the caller's transaction."""
        conn.execute("DELETE FROM segments WHERE stream_id = ? AND idx >= ?", (stream_id, index))
        conn.executemany(
            "INSERT INTO segments "
            "(stream_id, idx, start_s, end_s, genre, confidence, updates) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    stream_id,
                    index + i,
                    segment.start_s,
                    segment.end_s,
                    segment.genre,
                    segment.confidence,
                    segment.updates,
                )
                for i, segment in enumerate(segments)
            ],
        )

    def write_tails(self, tails: Sequence[Tail]) -> list[tuple[str, str]]:
        """:meth:`write_tail` for many streams in one transaction (a batch of windows' updates).

        Each tail is written as :meth:`write_tail` writes it, inside a savepoint of its own: a
        tail that cannot be written (an unknown stream, a negative index) is rolled back alone
        and the others are kept. Returns ``(stream_id, reason)`` of each tail not written.

        Raises:
            StorageError: the transaction itself failed (nothing was written).
        """
        failed: list[tuple[str, str]] = []
        with self._op("write_tails") as conn, conn:
            if not conn.in_transaction:
                conn.execute("BEGIN")  # one transaction; each tail a savepoint inside it
            for stream_id, index, segments in tails:
                if index < 0:
                    failed.append((stream_id, f"index must be >= 0, got {index!r}"))
                    continue
                conn.execute("SAVEPOINT tail")
                try:
                    self._replace_tail(conn, stream_id, index, segments)
                except sqlite3.Error as exc:
                    conn.execute("ROLLBACK TO tail")
                    failed.append((stream_id, str(exc)))
                conn.execute("RELEASE tail")
        return failed

    def timeline(self, stream_id: str) -> list[Segment]:
        """The stored segments of a stream ordered by index (empty for an unknown stream)."""
        with self._op("timeline") as conn:
            rows = conn.execute(
                "SELECT start_s, end_s, genre, confidence, updates FROM segments "
                "WHERE stream_id = ? ORDER BY idx",
                (stream_id,),
            ).fetchall()
        return [Segment(*row) for row in rows]

    def add_title(self, stream_id: str, title: TrackTitle) -> None:
        """Record a title announced by a stream.

        Raises:
            StorageError: the stream does not exist, or the write failed.
        """
        with self._op("add_title") as conn, conn:
            conn.execute(
                "INSERT INTO titles (stream_id, stream_time_s, wall_time, title) "
                "VALUES (?, ?, ?, ?)",
                (stream_id, title.stream_time_s, title.wall_time, title.title),
            )

    def titles(self, stream_id: str) -> list[TrackTitle]:
        """The titles of a stream in the order announced (empty for an unknown stream)."""
        with self._op("titles") as conn:
            rows = conn.execute(
                "SELECT stream_time_s, wall_time, title FROM titles "
                "WHERE stream_id = ? ORDER BY rowid",
                (stream_id,),
            ).fetchall()
        return [TrackTitle(*row) for row in rows]

    def prune(self, before_wall_time: float) -> int:
        """Delete every stream that ended before ``before_wall_time`` (wall-clock unix seconds),
        with its segments and titles, in one transaction; returns how many streams went.

        Live streams (``ended_at`` unset) are never deleted. Segments and titles are deleted
        explicitly, so nothing is left behind even on a connection without foreign keys.

        Raises:
            ValueError: ``before_wall_time`` is NaN.
            StorageError: the write failed (nothing was deleted).
        """
        if math.isnan(before_wall_time):
            raise ValueError("before_wall_time must be a number, got NaN")
        old = "SELECT stream_id FROM streams WHERE ended_at IS NOT NULL AND ended_at < ?"
        with self._op("prune") as conn, conn:
            conn.execute(f"DELETE FROM segments WHERE stream_id IN ({old})", (before_wall_time,))
            conn.execute(f"DELETE FROM titles WHERE stream_id IN ({old})", (before_wall_time,))
            cur = conn.execute(
                "DELETE FROM streams WHERE ended_at IS NOT NULL AND ended_at < ?",
                (before_wall_time,),
            )
            return cur.rowcount

    def close(self) -> None:
        """Close the database; later calls raise :class:`StorageError`. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._conn.close()

    def __enter__(self) -> TimelineStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
