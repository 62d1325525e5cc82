"""The embedded journal: SQLite in the state directory, for a daemon on its own.

SQLite in WAL mode with ``synchronous=NORMAL``: a commit survives ``kill -9`` (the WAL is
written before ``commit`` returns); only a power cut can lose the last few, and the
rescan finds those files again. Statements are short and run on the event loop's
thread: a thread hop would cost more than the statement. One daemon owns the file (the
state directory's lock), so a claim never has to be fenced here.

**Group commit.** Writes made in one turn of the event loop share one transaction,
committed at the end of that turn; each write's coroutine returns only once its commit
is done, so "journal before send" still holds for every file, at a fraction of the cost
(a commit writes the WAL; eight files' checkpoints in one commit write it once). When a
commit fails (a full disk), every write of that turn fails with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import sqlite3
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from uploader_daemon.errors import CorruptJournalError, StateDirError
from uploader_daemon.identity import FileIdentity
from uploader_daemon.journal.model import (
    ACTIVE_STATES,
    SETTLED_IN_PLACE,
    Claim,
    Disposition,
    FileRecord,
    FileState,
    TargetCounts,
)
from uploader_daemon.journal.sqlite_schema import SCHEMA_VERSION, prepare

_ACTIVE = "('pending', 'uploading', 'delivered')"
_SETTLED = "('kept', 'left_in_place')"


class SqliteJournal:
    """The SQLite journal of every file the daemon has seen (see :mod:`..model`)."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._db = connection
        self._batch: asyncio.Future[None] | None = None  # the open transaction's commit

    @classmethod
    def open(cls, path: Path | str) -> SqliteJournal:
        """Open (creating if needed) the journal at ``path`` (``":memory:"`` for tests).

        Raises :class:`StateDirError` for a file that is not a journal or is newer.
        """
        try:
            connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.DatabaseError as error:
            raise StateDirError(f"cannot open the journal {path}: {error}") from None
        try:
            prepare(connection, path)
        except BaseException as error:
            # A refused journal must not leave its file open (and locked) behind.
            connection.close()
            if isinstance(error, sqlite3.DatabaseError):
                kind = CorruptJournalError if _damaged(error) else StateDirError
                raise kind(f"cannot open the journal {path}: {error}") from None
            raise
        return cls(connection)

    @classmethod
    def open_or_set_aside(
        cls, path: Path, *, may_set_aside: bool, now: float
    ) -> tuple[SqliteJournal, Path | None]:
        """Open the journal; a damaged one is renamed beside itself and a fresh one started.

        Returns the journal and where the damaged one went (``None`` when it was fine).
        With ``may_set_aside`` false (a target keeps delivered files in place, and a fresh
        journal would send every one of them again) a damaged journal raises
        :class:`CorruptJournalError` with the way to recover.
        """
        try:
            return cls.open(path), None
        except CorruptJournalError as error:
            stamp = datetime.datetime.fromtimestamp(now, datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
            aside = path.with_name(f"{path.name}.corrupt-{stamp}")
            if not may_set_aside:
                raise CorruptJournalError(
                    f"{error}; it cannot be replaced by a fresh one automatically, because a target keeps "
                    "delivered files in place (after_upload: keep) and a fresh journal would send each of "
                    f"them again. To recover: move it aside (mv {path} {aside}), then either move the kept "
                    "files out of the drop folder first or accept that they are sent again, and start "
                    "the daemon"
                ) from None
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{path}{suffix}", f"{aside}{suffix}")
        # Private from the first byte, whatever the umask (SQLite's -wal/-shm follow its mode).
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
        return cls.open(path), aside

    async def close(self) -> None:
        self._commit()
        self._db.close()

    async def journal_id(self) -> str:
        row = self._db.execute("SELECT value FROM meta WHERE key='journal_id'").fetchone()
        return str(row["value"])

    # --- discovery -------------------------------------------------------------------

    async def admit(self, target: str, path: str, identity: FileIdentity, now: float) -> FileRecord | None:
        # A new file (the common case) is one statement: inserted unless this very version
        # was finished and left in place, or an active row holds the path. No await between
        # the statements below: the journal is used from one thread, and the unique index
        # on active rows backs that up.
        stored = _stored(path)
        size, mtime_ns, inode, device = _identity_columns(identity)
        key = _new_key()
        inserted = self._write(
            "INSERT INTO files (target, path, size, mtime_ns, inode, device, state, idempotency_key, "  # noqa: S608
            "discovered_at, updated_at) SELECT ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ? "
            "WHERE NOT EXISTS (SELECT 1 FROM files WHERE target=? AND path=? AND size=? AND mtime_ns=? "
            f"AND disposition IN {_SETTLED} AND (inode IS NULL OR ? IS NULL OR inode=?)) "
            f"ON CONFLICT (target, path) WHERE state IN {_ACTIVE} DO NOTHING RETURNING id",
            (
                *(target, stored, size, mtime_ns, inode, device, key, now, now),
                *(target, stored, size, mtime_ns, inode, inode),  # the settled-in-place look-up
            ),
        ).fetchone()
        if inserted is not None:
            await self._durable()
            return FileRecord(
                id=inserted["id"],
                target=target,
                path=path,
                identity=identity,
                state=FileState.PENDING,
                attempts=0,
                next_step=0,
                step_in_flight=None,
                outputs={},
                plan=None,
                last_error=None,
                last_status=None,
                disposition=None,
                destination=None,
                idempotency_key=key,
                owner=None,
                discovered_at=now,
                updated_at=now,
            )
        active = self._db.execute(
            f"SELECT * FROM files WHERE target=? AND path=? AND state IN {_ACTIVE}",  # noqa: S608
            (target, stored),
        ).fetchone()
        if active is None or active["state"] != FileState.PENDING:
            await self._durable()
            return None  # this version was settled in place; or the file is in flight, delivered
        record = _record(active)
        if record.identity.same_version(identity):
            await self._durable()
            return record
        # Another version while waiting: the upload must send the new content, so a
        # checkpoint of an earlier attempt (a document created for the old size, a poll of
        # the old upload) no longer applies; it also gets its own attempts and key.
        self._write(
            "UPDATE files SET size=?, mtime_ns=?, inode=?, device=?, next_step=0, step_in_flight=NULL, "
            "outputs='{}', attempts=0, last_error=NULL, last_status=NULL, not_before=NULL, "
            "idempotency_key=?, updated_at=? WHERE id=?",
            (size, mtime_ns, inode, device, _new_key(), now, record.id),
        )
        updated = await self.get(record.id)
        await self._durable()
        return updated

    async def is_settled(self, target: str, path: str, identity: FileIdentity) -> bool:
        rows = self._db.execute(
            f"SELECT inode FROM files WHERE target=? AND path=? AND size=? AND mtime_ns=? "  # noqa: S608
            f"AND disposition IN {_SETTLED}",
            (target, _stored(path), identity.size, identity.mtime_ns),
        ).fetchall()
        return any(
            FileIdentity(identity.size, identity.mtime_ns, row["inode"]).same_version(identity)
            for row in rows
        )

    # --- claims ----------------------------------------------------------------------

    async def claim(self, record_id: int, owner: str, now: float) -> Claim | None:
        row = self._write(
            "UPDATE files SET state=CASE WHEN state='delivered' THEN 'delivered' ELSE 'uploading' END, "
            "owner=?, fence=fence+1, updated_at=? WHERE id=? AND (state='pending' OR "
            "(state IN ('uploading', 'delivered') AND (owner IS NULL OR owner=?))) RETURNING *",
            (owner, now, record_id, owner),
        ).fetchone()
        if row is None:
            return None
        await self._durable()
        return Claim(_record(row), owner, row["fence"])

    async def release_claims(self, owner: str, now: float) -> int:
        # Rows a daemon of schema 2 left uploading have no owner: they were this
        # state_dir's, whose lock this daemon holds.
        cursor = self._write(
            "UPDATE files SET state='pending', owner=NULL, updated_at=? "
            "WHERE state='uploading' AND (owner=? OR owner IS NULL)",
            (now, owner),
        )
        released = cursor.rowcount
        self._write("UPDATE files SET owner=NULL WHERE state='delivered' AND owner=?", (owner,))
        await self._durable()
        return released

    # --- a delivery's progress -------------------------------------------------------

    async def step_started(self, claim: Claim, step: int, plan: str, now: float) -> None:
        self._update(claim, now, state=FileState.UPLOADING, step_in_flight=step, plan=plan)
        await self._durable()

    async def step_finished(
        self, claim: Claim, step: int, outputs: dict[str, Any], now: float, *, last: bool = False
    ) -> None:
        columns: dict[str, Any] = {
            "next_step": step + 1,
            "step_in_flight": None,
            "outputs": json.dumps(outputs),
        }
        if last:
            columns["state"] = FileState.DELIVERED
        self._update(claim, now, **columns)
        await self._durable()

    async def resume_at(self, claim: Claim, step: int, outputs: dict[str, Any], now: float) -> None:
        self._update(claim, now, next_step=step, step_in_flight=None, outputs=json.dumps(outputs))
        await self._durable()

    async def delivered(self, claim: Claim, now: float) -> None:
        self._update(claim, now, state=FileState.DELIVERED, step_in_flight=None)
        await self._durable()

    async def release(
        self,
        claim: Claim,
        now: float,
        *,
        failed_attempt: bool = False,
        error: str | None = None,
        status: int | None = None,
        not_before: float | None = None,
    ) -> FileRecord:
        assignments = "state='pending', owner=NULL, not_before=?, updated_at=?"
        values: list[Any] = [not_before, now]
        if failed_attempt:
            assignments += ", attempts=attempts+1, last_error=?, last_status=?"
            values += [error, status]
        elif error is not None:
            assignments += ", last_error=?"
            values.append(error)
        self._write(
            f"UPDATE files SET {assignments} WHERE id=? AND state IN ('pending', 'uploading')",  # noqa: S608
            (*values, claim.record_id),
        )
        released = await self.get(claim.record_id)
        await self._durable()
        return released

    async def finish(
        self, claim: Claim, disposition: Disposition, destination: str | None, now: float
    ) -> None:
        self._update(
            claim,
            now,
            state=FileState.DONE,
            disposition=disposition,
            destination=_stored(destination) if destination is not None else None,
            last_error=None,
            owner=None,
        )
        await self._durable()

    async def fail(
        self,
        claim: Claim,
        error: str,
        status: int | None,
        disposition: Disposition,
        destination: str | None,
        now: float,
        *,
        attempts: int | None = None,
    ) -> None:
        counted = {} if attempts is None else {"attempts": attempts}
        self._update(
            claim,
            now,
            **counted,
            state=FileState.FAILED,
            last_error=error,
            last_status=status,
            disposition=disposition,
            destination=_stored(destination) if destination is not None else None,
            owner=None,
        )
        await self._durable()

    async def forget(self, claim: Claim, now: float) -> None:
        self._update(claim, now, state=FileState.GONE, disposition=Disposition.VANISHED, owner=None)
        await self._durable()

    async def delivered_before(self, record: FileRecord) -> bool:
        rows = self._db.execute(
            "SELECT inode FROM files WHERE target=? AND path=? AND size=? AND mtime_ns=? AND id<>? "
            "AND state='done' AND disposition IN ('archived', 'deleted')",
            (record.target, _stored(record.path), record.size, record.mtime_ns, record.id),
        ).fetchall()
        identity = record.identity
        return any(
            FileIdentity(identity.size, identity.mtime_ns, row["inode"]).same_version(identity)
            for row in rows
        )

    # --- one daemon: nothing to share --------------------------------------------------

    @property
    def takeover_every(self) -> float | None:
        return None  # no other daemon leaves work behind: an idle daemon stays idle

    async def claimable(self, target: str) -> list[tuple[int, str]]:
        return []

    def holds(self, claim: Claim) -> bool:
        return True  # the state_dir's lock: nobody else can take a claim over

    def lease_watch(self, claim: Claim) -> asyncio.Event | None:
        return None

    def unreachable(self) -> None:
        return None  # a file on local disk: supervision checks that it is writable

    # --- reading ---------------------------------------------------------------------

    async def unfinished(self, target: str) -> list[FileRecord]:
        rows = self._db.execute(
            "SELECT * FROM files WHERE target=? AND state IN ('pending','delivered') ORDER BY id",
            (target,),
        ).fetchall()
        return [_record(row) for row in rows]

    async def get(self, record_id: int) -> FileRecord:
        row = self._db.execute("SELECT * FROM files WHERE id=?", (record_id,)).fetchone()
        if row is None:
            raise KeyError(record_id)
        return _record(row)

    async def counts(self, target: str) -> TargetCounts:
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
            pending=by_state.get(FileState.PENDING, 0),
            uploading=by_state.get(FileState.UPLOADING, 0) + by_state.get(FileState.DELIVERED, 0),
            done=by_state.get(FileState.DONE, 0),
            failed=by_state.get(FileState.FAILED, 0),
            last_error=last["last_error"] if last else None,
            last_error_at=last["updated_at"] if last else None,
        )

    async def records(
        self, target: str | None = None, states: Sequence[FileState] = (), limit: int | None = None
    ) -> list[FileRecord]:
        conditions: list[str] = []
        values: list[Any] = []
        if target is not None:
            conditions.append("target=?")
            values.append(target)
        if states:
            conditions.append(f"state IN ({', '.join('?' for _ in states)})")
            values += [str(state) for state in states]
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        bound = f"LIMIT {int(limit)}" if limit is not None else ""
        rows = self._db.execute(
            f"SELECT * FROM files {where} ORDER BY updated_at DESC, id DESC {bound}",  # noqa: S608
            values,
        ).fetchall()
        return [_record(row) for row in rows]

    async def prune(self, older_than: float) -> int:
        cursor = self._write(
            f"DELETE FROM files WHERE state IN ('done','failed','gone') AND updated_at < ? "  # noqa: S608
            f"AND (disposition IS NULL OR disposition NOT IN {_SETTLED})",
            (older_than,),
        )
        await self._durable()
        return cursor.rowcount

    def _update(self, claim: Claim, now: float, **columns: Any) -> None:
        assignments = ", ".join(f"{name}=?" for name in columns)
        self._write(
            f"UPDATE files SET {assignments}, updated_at=? WHERE id=?",  # noqa: S608 -- names are ours
            (*columns.values(), now, claim.record_id),
        )

    # --- group commit ----------------------------------------------------------------

    def _write(self, sql: str, parameters: Sequence[Any] = ()) -> sqlite3.Cursor:
        """Run a write in this loop turn's transaction (opened, and its commit scheduled, if none)."""
        db = self._db
        if self._batch is None:
            db.execute("BEGIN IMMEDIATE")
            loop = asyncio.get_running_loop()
            self._batch = loop.create_future()
            loop.call_soon(self._commit)
        try:
            return db.execute(sql, parameters)
        except sqlite3.Error as error:
            if not db.in_transaction:  # SQLite rolled the whole turn back (a full disk, say)
                self._settle_batch(error)
            raise

    async def _durable(self) -> None:
        """Return once the writes made so far are committed."""
        if self._batch is not None:
            # Shielded: one cancelled writer must not cancel the commit the others wait on.
            await asyncio.shield(self._batch)

    def _commit(self) -> None:
        if self._batch is None:
            return
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error as error:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            self._settle_batch(error)
            return
        self._settle_batch(None)

    def _settle_batch(self, error: sqlite3.Error | None) -> None:
        batch, self._batch = self._batch, None
        if batch is None or batch.done():
            return
        if error is None:
            batch.set_result(None)
        else:
            batch.set_exception(error)


def _damaged(error: sqlite3.DatabaseError) -> bool:
    """Whether SQLite says the file itself is broken (not busy, locked or unreadable)."""
    text = str(error).lower()
    return "not a database" in text or "malformed" in text or "corrupt" in text


def _stored(path: str) -> str | bytes:
    """A path as the journal keeps it: text, or its raw bytes when it is not UTF-8.

    Linux names are bytes; Python holds an undecodable one with surrogate escapes,
    which SQLite's text cannot store. SQLite compares a BLOB with a BLOB, so lookups and
    the unique index work the same for both.
    """
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(path)
    return path


def _loaded(value: str | bytes) -> str:
    return os.fsdecode(value) if isinstance(value, bytes) else value


def _identity_columns(identity: FileIdentity) -> tuple[int, int, int | None, int | None]:
    return identity.size, identity.mtime_ns, identity.inode, identity.device


def _new_key() -> str:
    """An idempotency key: stable for one version of one file, never reused."""
    return uuid.uuid4().hex


def _record(row: sqlite3.Row) -> FileRecord:
    disposition = row["disposition"]
    return FileRecord(
        id=row["id"],
        target=row["target"],
        path=_loaded(row["path"]),
        identity=FileIdentity(row["size"], row["mtime_ns"], row["inode"], row["device"]),
        state=FileState(row["state"]),
        attempts=row["attempts"],
        next_step=row["next_step"],
        step_in_flight=row["step_in_flight"],
        outputs=json.loads(row["outputs"]),
        plan=row["plan"],
        last_error=row["last_error"],
        last_status=row["last_status"],
        disposition=Disposition(disposition) if disposition else None,
        destination=_loaded(row["destination"]) if row["destination"] is not None else None,
        idempotency_key=row["idempotency_key"],
        owner=row["owner"],
        discovered_at=row["discovered_at"],
        updated_at=row["updated_at"],
    )


__all__ = ["ACTIVE_STATES", "SCHEMA_VERSION", "SETTLED_IN_PLACE", "SqliteJournal"]
