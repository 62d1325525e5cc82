"""The PostgreSQL journal's schema, and its versioned migrations.

The version lives in ``uploader_meta`` (key ``schema_version``). Every node of a group
runs :func:`prepare` at start; the migrations run in one transaction under a
transaction-scoped advisory lock, so nodes starting together migrate once, one after
the other, and a node that sees a newer schema than it knows refuses to start.

Tables are prefixed ``uploader_`` so the journal can live in a database shared with
other things.
"""

from __future__ import annotations

import uuid

import psycopg

from uploader_daemon.errors import JournalUnavailableError

# 1: the first schema, with the columns of the SQLite schema 3, claims with a lease in
#    the database's clock (lease_expires) and the shared backoff in it (not_before).
SCHEMA_VERSION = 1
# Any fixed 64-bit number: all nodes of a group take the same advisory lock.
_MIGRATION_LOCK = 0x75706C6F61646572  # "uploader"

_META = """
CREATE TABLE IF NOT EXISTS uploader_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
)
"""
_MIGRATIONS: dict[int, str] = {
    1: """
CREATE TABLE uploader_files (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    target          text             NOT NULL,
    path            bytea            NOT NULL,  -- the name's bytes: any name Linux allows
    size            bigint           NOT NULL,
    mtime_ns        bigint           NOT NULL,
    inode           numeric(20)      NULL,      -- 64-bit unsigned on some filesystems
    device          numeric(20)      NULL,      -- a local hint, never compared
    state           text             NOT NULL,
    attempts        integer          NOT NULL DEFAULT 0,
    next_step       integer          NOT NULL DEFAULT 0,
    step_in_flight  integer          NULL,
    outputs         jsonb            NOT NULL DEFAULT '{}',
    plan            text             NULL,
    last_error      text             NULL,
    last_status     integer          NULL,
    disposition     text             NULL,
    destination     bytea            NULL,
    idempotency_key text             NOT NULL,
    owner           text             NULL,      -- the node holding the claim
    fence           bigint           NOT NULL DEFAULT 0,
    lease_expires   timestamptz      NULL,      -- the database's clock
    not_before      double precision NULL,      -- epoch seconds, the database's clock
    discovered_at   double precision NOT NULL,  -- epoch seconds, the admitting node's clock
    updated_at      double precision NOT NULL
);
-- Admission is safe from several nodes at once: one active row per file.
CREATE UNIQUE INDEX uploader_files_active ON uploader_files (target, path)
    WHERE state IN ('pending', 'uploading', 'delivered');
-- The work a node may take over: small, since only unfinished rows are in it.
CREATE INDEX uploader_files_open ON uploader_files (target, id)
    WHERE state IN ('pending', 'uploading', 'delivered');
CREATE INDEX uploader_files_owner ON uploader_files (owner) WHERE owner IS NOT NULL;
-- Only the rows that stop a file from being sent again: kept, or failed and unmovable.
CREATE INDEX uploader_files_settled ON uploader_files (target, path, size, mtime_ns)
    WHERE disposition IN ('kept', 'left_in_place');
CREATE INDEX uploader_files_recent ON uploader_files (updated_at);
""",
}


async def prepare(connection: psycopg.AsyncConnection[object]) -> None:
    """Create or migrate the schema (autocommit ``connection``); raises on a newer schema."""
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        await connection.execute(_META)
        cursor = await connection.execute("SELECT value FROM uploader_meta WHERE key = 'schema_version'")
        row = await cursor.fetchone()
        version = int(row[0]) if row else 0  # type: ignore[index]
        if version > SCHEMA_VERSION:
            raise JournalUnavailableError(
                f"the PostgreSQL journal has schema {version}, written by a newer uploader-daemon than "
                f"this one (schema {SCHEMA_VERSION}): upgrade this node to the group's version"
            )
        for target_version in range(version + 1, SCHEMA_VERSION + 1):
            await connection.execute(_MIGRATIONS[target_version])
        await connection.execute(
            "INSERT INTO uploader_meta (key, value) VALUES ('schema_version', %s) "
            "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            (str(SCHEMA_VERSION),),
        )
        await connection.execute(
            "INSERT INTO uploader_meta (key, value) VALUES ('journal_id', %s) ON CONFLICT (key) DO NOTHING",
            (uuid.uuid4().hex,),
        )
