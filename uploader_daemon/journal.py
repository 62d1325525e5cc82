"""The durable journal: one row per file, so that no file is ever lost or sent twice.

A file's life::

    pending ──> uploading ──> delivered ──> done        (after_upload action applied)
       ^            │
       └────────────┤  (retry, requeue; a crash leaves "uploading", reset on start)
                    └──> failed                         (moved to failed_dir)
    pending ──> gone                                    (deleted by someone else first)

``uploading`` rows also record the step checkpoint: the next step to run, the step that
was in flight, and the values completed steps saved, so a multi-step delivery resumes
where it safely can after a crash.

SQLite in WAL mode with ``synchronous=NORMAL``: a commit survives ``kill -9`` (the WAL is
written before ``commit`` returns); only a power cut can lose the last few, and the
rescan finds those files again. Calls are short and run on the event loop's thread:
a thread hop would cost more than the statement.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uploader_daemon.errors import StateDirError

# 1: the first schema; 2: adds the step-list fingerprint (plan) and leaner indexes.
_SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id             INTEGER PRIMARY KEY,
    target         TEXT    NOT NULL,
    path           TEXT    NOT NULL,   -- relative to the target's folder
    size           INTEGER NOT NULL,
    mtime_ns       INTEGER NOT NULL,
    state          TEXT    NOT NULL,
    attempts       INTEGER NOT NULL DEFAULT 0,
    next_step      INTEGER NOT NULL DEFAULT 0,
    step_in_flight INTEGER,
    outputs        TEXT    NOT NULL DEFAULT '{}',
    plan           TEXT,               -- which step list the checkpoint belongs to
    last_error     TEXT,
    last_status    INTEGER,
    destination    TEXT,
    discovered_at  REAL    NOT NULL,
    updated_at     REAL    NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS files_active ON files (target, path)
    WHERE state IN ('pending', 'uploading', 'delivered');
-- Only the rows that stop a file from being sent again: kept, or failed and unmovable.
-- No index on state: every state change would rewrite it (measured: 3.5x the cost per
-- file); the queries that filter on state alone run at start-up and for `status`.
CREATE INDEX IF NOT EXISTS files_settled ON files (target, path, size, mtime_ns)
    WHERE destination IS NULL AND state IN ('done', 'failed');
"""
_MIGRATIONS = {
    # From 1 to 2. The column is added only if missing (development builds had it).
    2: """
DROP INDEX IF EXISTS files_by_state;
DROP INDEX IF EXISTS files_done;
""",
}


@dataclass(frozen=True)
class FileRecord:
    """One journal row."""

    id: int
    target: str
    path: str
    size: int
    mtime_ns: int
    state: str
    attempts: int
    next_step: int
    step_in_flight: int | None
    outputs: dict[str, Any]
    plan: str | None
    last_error: str | None
    last_status: int | None
    destination: str | None
    discovered_at: float
    updated_at: float


@dataclass(frozen=True)
class TargetCounts:
    """What ``status`` shows for one target."""

    pending: int = 0
    uploading: int = 0
    done: int = 0
    failed: int = 0
    last_error: str | None = None
    last_error_at: float | None = None


class Journal:
    """The SQLite journal of every file the daemon has seen."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._db = connection

    @classmethod
    def open(cls, path: Path) -> Journal:
        """Open (creating if needed) the journal at ``path``; raises :class:`StateDirError`."""
        try:
            connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.DatabaseError as error:
            raise StateDirError(f"cannot open the journal {path}: {error}") from None
        try:
            _prepare(connection, path)
        except BaseException as error:
            # A refused journal must not leave its file open (and locked) behind.
            connection.close()
            if isinstance(error, sqlite3.DatabaseError):
                raise StateDirError(f"cannot open the journal {path}: {error}") from None
            raise
        return cls(connection)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # --- discovery -------------------------------------------------------------------

    def admit(self, target: str, path: str, size: int, mtime_ns: int, now: float) -> FileRecord | None:
        """Record a ready file as pending, unless it is already known.

        Returns the pending record (new, or the one already waiting, updated to the
        file's current size and mtime), or ``None`` when the file is in flight, or was
        delivered and kept (or failed and could not be moved) and has not changed.
        """
        # No explicit transaction: the journal is used from one thread only, and the
        # unique index on active (target, path) rows backs that up.
        db = self._db
        active = db.execute(
            "SELECT * FROM files WHERE target=? AND path=? AND state IN ('pending','uploading','delivered')",
            (target, path),
        ).fetchone()
        if active is not None:
            if active["state"] != "pending":
                return None
            if (active["size"], active["mtime_ns"]) == (size, mtime_ns):
                return _record(active)
            # Rewritten while waiting: the upload must send the new content, so a
            # checkpoint of an earlier attempt (a document created for the old size, a
            # poll of the old upload) no longer applies.
            # The new version also gets the full number of attempts.
            db.execute(
                "UPDATE files SET size=?, mtime_ns=?, next_step=0, step_in_flight=NULL, "
                "outputs='{}', attempts=0, last_error=NULL, last_status=NULL, updated_at=? WHERE id=?",
                (size, mtime_ns, now, active["id"]),
            )
            return self.get(active["id"])
        if self.was_settled(target, path, size, mtime_ns):
            return None
        cursor = db.execute(
            "INSERT INTO files (target, path, size, mtime_ns, state, discovered_at, updated_at) "
            "VALUES (?, ?, ?, ?, 'pending', ?, ?)",
            (target, path, size, mtime_ns, now, now),
        )
        assert cursor.lastrowid is not None
        return FileRecord(
            id=cursor.lastrowid,
            target=target,
            path=path,
            size=size,
            mtime_ns=mtime_ns,
            state="pending",
            attempts=0,
            next_step=0,
            step_in_flight=None,
            outputs={},
            plan=None,
            last_error=None,
            last_status=None,
            destination=None,
            discovered_at=now,
            updated_at=now,
        )

    def was_settled(self, target: str, path: str, size: int, mtime_ns: int) -> bool:
        """Whether this exact file was finished but left in place.

        That is a file delivered with ``after_upload: keep``, or one given up on that
        could not be moved to failed_dir: either way, sending it again would be wrong.
        """
        row = self._db.execute(
            "SELECT 1 FROM files WHERE target=? AND path=? AND size=? AND mtime_ns=? "
            "AND state IN ('done','failed') AND destination IS NULL LIMIT 1",
            (target, path, size, mtime_ns),
        ).fetchone()
        return row is not None

    # --- start-up --------------------------------------------------------------------

    def recover_interrupted(self, now: float) -> int:
        """Return files a crash left ``uploading`` to ``pending``; returns how many."""
        cursor = self._db.execute(
            "UPDATE files SET state='pending', updated_at=? WHERE state='uploading'", (now,)
        )
        return cursor.rowcount

    def unfinished(self, target: str) -> list[FileRecord]:
        """Pending and delivered-but-not-filed records of a target, oldest first."""
        rows = self._db.execute(
            "SELECT * FROM files WHERE target=? AND state IN ('pending','delivered') ORDER BY id",
            (target,),
        ).fetchall()
        return [_record(row) for row in rows]

    def get(self, record_id: int) -> FileRecord:
        row = self._db.execute("SELECT * FROM files WHERE id=?", (record_id,)).fetchone()
        if row is None:
            raise KeyError(record_id)
        return _record(row)

    # --- a delivery's progress -------------------------------------------------------

    def step_started(self, record_id: int, step: int, plan: str, now: float) -> None:
        """Step ``step`` of step list ``plan`` is about to send; a crash now leaves its
        outcome unknown.

        Also marks the file ``uploading`` (one statement instead of two per file).
        """
        self._update(record_id, now, state="uploading", step_in_flight=step, plan=plan)

    def step_finished(
        self, record_id: int, step: int, outputs: dict[str, Any], now: float, *, last: bool = False
    ) -> None:
        """Step ``step`` succeeded; ``outputs`` are the values saved by steps so far.

        After the ``last`` step the file is ``delivered`` in the same statement: from
        that commit on it is never sent again.
        """
        if last:
            self._update(
                record_id,
                now,
                state="delivered",
                next_step=step + 1,
                step_in_flight=None,
                outputs=json.dumps(outputs),
            )
        else:
            self._update(record_id, now, next_step=step + 1, step_in_flight=None, outputs=json.dumps(outputs))

    def resume_at(self, record_id: int, step: int, outputs: dict[str, Any], now: float) -> None:
        """Set where the next attempt starts (0 with no outputs: from the beginning)."""
        self._update(record_id, now, next_step=step, step_in_flight=None, outputs=json.dumps(outputs))

    def retry_later(self, record_id: int, error: str, status: int | None, now: float) -> int:
        """Count a failed attempt and put the file back to pending; returns the attempt count."""
        with self._transaction() as db:
            db.execute(
                "UPDATE files SET state='pending', attempts=attempts+1, last_error=?, last_status=?, "
                "updated_at=? WHERE id=?",
                (error, status, now, record_id),
            )
            attempts: int = db.execute("SELECT attempts FROM files WHERE id=?", (record_id,)).fetchone()[0]
        return attempts

    def requeue(self, record_id: int, now: float, error: str | None = None) -> None:
        """Put the file back to pending without counting an attempt (login down, shutdown)."""
        if error is None:
            self._update(record_id, now, state="pending")
        else:
            self._update(record_id, now, state="pending", last_error=error)

    def interrupted(self, record_id: int, now: float) -> None:
        """A delivery was cut off (shutdown): back to pending, checkpoint kept."""
        self._db.execute(
            "UPDATE files SET state='pending', updated_at=? WHERE id=? AND state='uploading'",
            (now, record_id),
        )

    def delivered(self, record_id: int, now: float) -> None:
        """Every step succeeded: from now on the file must never be sent again."""
        self._update(record_id, now, state="delivered", step_in_flight=None)

    def done(self, record_id: int, destination: str | None, now: float) -> None:
        """The after_upload action is applied (``destination`` is None when kept)."""
        self._update(record_id, now, state="done", destination=destination, last_error=None)

    def failed(
        self, record_id: int, error: str, status: int | None, destination: str | None, now: float
    ) -> None:
        """Given up: the file was moved to ``destination`` in failed_dir."""
        self._update(
            record_id, now, state="failed", last_error=error, last_status=status, destination=destination
        )

    def gone(self, record_id: int, now: float) -> None:
        """The file disappeared from the drop folder before it was delivered."""
        self._update(record_id, now, state="gone")

    # --- reporting and housekeeping --------------------------------------------------

    def counts(self, target: str) -> TargetCounts:
        rows = self._db.execute(
            "SELECT state, COUNT(*) AS n FROM files WHERE target=? GROUP BY state", (target,)
        ).fetchall()
        by_state = {row["state"]: row["n"] for row in rows}
        last = self._db.execute(
            "SELECT last_error, updated_at FROM files WHERE target=? AND last_error IS NOT NULL "
            "ORDER BY updated_at DESC LIMIT 1",
            (target,),
        ).fetchone()
        return TargetCounts(
            pending=by_state.get("pending", 0),
            uploading=by_state.get("uploading", 0) + by_state.get("delivered", 0),
            done=by_state.get("done", 0),
            failed=by_state.get("failed", 0),
            last_error=last["last_error"] if last else None,
            last_error_at=last["updated_at"] if last else None,
        )

    def prune(self, older_than: float) -> int:
        """Delete finished rows last touched before ``older_than``.

        Rows of files left in place (kept, or failed and unmovable) stay: they are what
        stops those files from being sent again.
        """
        cursor = self._db.execute(
            "DELETE FROM files WHERE state IN ('done','failed','gone') AND updated_at < ? "
            "AND NOT (state IN ('done','failed') AND destination IS NULL)",
            (older_than,),
        )
        return cursor.rowcount

    def _update(self, record_id: int, now: float, **columns: Any) -> None:
        assignments = ", ".join(f"{name}=?" for name in columns)
        self._db.execute(
            f"UPDATE files SET {assignments}, updated_at=? WHERE id=?",  # noqa: S608 -- names are ours
            (*columns.values(), now, record_id),
        )


def _prepare(connection: sqlite3.Connection, path: Path) -> None:
    """Set the pragmas and create (or check) the schema; raises on a foreign or newer file."""
    connection.row_factory = sqlite3.Row
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("PRAGMA busy_timeout=5000")
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    if version > _SCHEMA_VERSION:
        raise StateDirError(f"the journal {path} was written by a newer uploader-daemon; upgrade it")
    if version == _SCHEMA_VERSION:
        return
    if version > 0:
        _migrate(connection, version)
    connection.executescript(_SCHEMA)
    connection.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")


def _migrate(connection: sqlite3.Connection, version: int) -> None:
    """Bring a journal written by an older uploader-daemon up to date, keeping its rows."""
    columns = {row["name"] for row in connection.execute("PRAGMA table_info(files)")}
    if "plan" not in columns:
        connection.execute("ALTER TABLE files ADD COLUMN plan TEXT")
    for target_version in range(version + 1, _SCHEMA_VERSION + 1):
        connection.executescript(_MIGRATIONS[target_version])


def _record(row: sqlite3.Row) -> FileRecord:
    values = dict(row)
    values["outputs"] = json.loads(values["outputs"])
    return FileRecord(**values)
