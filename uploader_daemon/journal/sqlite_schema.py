"""The SQLite journal's schema, and how a journal written by an older version is upgraded.

Versions live in ``PRAGMA user_version``; an upgrade keeps every row (columns are added
in place, sentinels rewritten), so a daemon upgrade never forgets a file.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from uploader_daemon.errors import StateDirError

# 1: the first schema; 2: the step-list fingerprint (plan), leaner indexes;
# 3: the file's identity (inode), dispositions apart from destinations, the
#    idempotency key, claims (owner, fence), the shared backoff (not_before) and the
#    journal's own id (table meta).
SCHEMA_VERSION = 3
SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id              INTEGER PRIMARY KEY,
    target          TEXT    NOT NULL,
    path            TEXT    NOT NULL,   -- relative to the target's folder (a BLOB when not UTF-8)
    size            INTEGER NOT NULL,
    mtime_ns        INTEGER NOT NULL,
    inode           INTEGER,
    device          INTEGER,            -- a local hint, never compared
    state           TEXT    NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_step       INTEGER NOT NULL DEFAULT 0,
    step_in_flight  INTEGER,
    outputs         TEXT    NOT NULL DEFAULT '{}',
    plan            TEXT,
    last_error      TEXT,
    last_status     INTEGER,
    disposition     TEXT,
    destination     TEXT,
    idempotency_key TEXT    NOT NULL,
    owner           TEXT,
    fence           INTEGER NOT NULL DEFAULT 0,
    not_before      REAL,
    discovered_at   REAL    NOT NULL,
    updated_at      REAL    NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT OR IGNORE INTO meta (key, value) VALUES ('journal_id', lower(hex(randomblob(16))));
CREATE UNIQUE INDEX IF NOT EXISTS files_active ON files (target, path)
    WHERE state IN ('pending', 'uploading', 'delivered');
-- Only the rows that stop a file from being sent again: kept, or failed and unmovable.
-- No index on state: every state change would rewrite it (measured: 3.5x the cost per
-- file); the queries that filter on state alone run at start-up and for `status`.
CREATE INDEX IF NOT EXISTS files_settled ON files (target, path, size, mtime_ns)
    WHERE disposition IN ('kept', 'left_in_place');
"""
_MIGRATIONS: dict[int, tuple[tuple[str, str], ...]] = {
    # Columns added only if missing (development builds had some of them).
    2: (("plan", "TEXT"),),
    3: (
        ("inode", "INTEGER"),
        ("device", "INTEGER"),
        ("disposition", "TEXT"),
        ("idempotency_key", "TEXT"),
        ("owner", "TEXT"),
        ("fence", "INTEGER NOT NULL DEFAULT 0"),
        ("not_before", "REAL"),
    ),
}
_AFTER_MIGRATION = {
    2: """
DROP INDEX IF EXISTS files_by_state;
DROP INDEX IF EXISTS files_done;
""",
    # Schema 2 wrote sentinels into destination; 3 says what happened in disposition.
    3: """
UPDATE files SET disposition = CASE
    WHEN state = 'gone' THEN 'vanished'
    WHEN destination IN ('vanished', 'deleted', 'changed', 'replaced') THEN destination
    WHEN destination IS NULL AND state = 'done' THEN 'kept'
    WHEN destination IS NULL AND state = 'failed' THEN 'left_in_place'
    WHEN state = 'done' THEN 'archived'
    ELSE 'parked' END
WHERE state IN ('done', 'failed', 'gone');
UPDATE files SET destination = NULL WHERE destination IN ('vanished', 'deleted', 'changed', 'replaced');
UPDATE files SET idempotency_key = lower(hex(randomblob(16))) WHERE idempotency_key IS NULL;
DROP INDEX IF EXISTS files_settled;
""",
}


def prepare(connection: sqlite3.Connection, path: Path | str) -> None:
    """Set the pragmas and create (or migrate) the schema; raises on a foreign or newer file."""
    connection.row_factory = sqlite3.Row
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("PRAGMA busy_timeout=5000")
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StateDirError(f"the journal {path} was written by a newer uploader-daemon; upgrade it")
    if version == SCHEMA_VERSION:
        # Cheap next to a lost file: a damaged page shows here, not in the middle of a delivery.
        verdict = connection.execute("PRAGMA quick_check").fetchone()[0]
        if verdict != "ok":
            raise sqlite3.DatabaseError(f"database disk image is malformed ({verdict})")
        return
    if version > 0:
        _migrate(connection, version)
    connection.executescript(SCHEMA)
    connection.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


def _migrate(connection: sqlite3.Connection, version: int) -> None:
    """Bring a journal written by an older uploader-daemon up to date, keeping its rows."""
    for target_version in range(version + 1, SCHEMA_VERSION + 1):
        columns = {row["name"] for row in connection.execute("PRAGMA table_info(files)")}
        for name, declaration in _MIGRATIONS[target_version]:
            if name not in columns:
                connection.execute(f"ALTER TABLE files ADD COLUMN {name} {declaration}")
        connection.executescript(_AFTER_MIGRATION[target_version])
