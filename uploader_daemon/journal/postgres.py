"""The shared journal: PostgreSQL, for a group of daemons on one drop folder.

Every node admits what its scans find (one active row per file: concurrent admissions
are safe), and claims a row before it works on it::

    UPDATE ... FROM (SELECT id ... FOR UPDATE SKIP LOCKED) ... SET owner, fence + 1,
                     lease_expires = now() + lease

A claim is taken from a pending row whose shared backoff (``not_before``) is over, or
from an unfinished row whose lease ran out (its node died or was cut off). Every later
write names the claim (``WHERE id AND owner AND fence``); a write that matches nothing
means another node took the row over: :class:`LeaseLostError`, and the worker leaves the
file and the row alone. Times that nodes compare (leases, backoff) are the database's
clock, so the hosts' clocks do not need to agree.

While this node holds claims, a heartbeat renews its leases every ``lease / 3``; a claim
not renewed in time is lost locally at its own deadline (:mod:`.leases`), database or
not. Statements are single and autocommit, on a small connection pool; when the
database cannot be reached they raise :class:`JournalUnavailableError` (the outage is
logged once, when it starts and when it ends: :mod:`.reachability`) and the work waits for it.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from uploader_daemon.errors import JournalUnavailableError
from uploader_daemon.identity import FileIdentity
from uploader_daemon.journal.leases import Leases
from uploader_daemon.journal.model import (
    Claim,
    Disposition,
    FileRecord,
    FileState,
    LeaseLostError,
    TargetCounts,
)
from uploader_daemon.journal.postgres_schema import prepare
from uploader_daemon.journal.reachability import Reachability
from uploader_daemon.logs import get_logger

log = get_logger(__name__)

_ACTIVE = "('pending', 'uploading', 'delivered')"
_SETTLED = "('kept', 'left_in_place')"
_NOW = "extract(epoch FROM now())"
# A node's own backoff timer may fire a little before the database's clock says it is
# over; this much early is still "over" (the backoff itself is seconds to minutes).
_BACKOFF_SLACK = 1.0
# A pending row is takeable, or an unfinished one whose lease ran out.
_TAKEABLE = (
    f"((state = 'pending' AND (not_before IS NULL OR not_before <= {_NOW} + {_BACKOFF_SLACK})) "
    "OR (state IN ('uploading', 'delivered') AND (owner IS NULL OR lease_expires IS NULL "
    "OR lease_expires < now())))"
)
# How many takeable rows one look-up returns (the next one finds the rest).
_TAKEOVER_BATCH = 1000
# How long one chain of reconnection attempts lasts (see ``open``).
_RECONNECT_CHAIN = 5.0

Connection = psycopg.AsyncConnection[DictRow]


class PostgresJournal:
    """The journal of a group of daemons, in PostgreSQL (see the module docstring)."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Connection],
        *,
        node: str,
        lease: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self._node = node
        self._lease = lease
        self._leases = Leases(lease, monotonic)
        self._heartbeat: asyncio.Task[None] | None = None
        self._checking: asyncio.Task[None] | None = None
        self._reachability = Reachability(monotonic)
        self._monotonic = monotonic
        self._closed = False
        self._log = log.bind(node=node)

    @classmethod
    async def open(cls, dsn: str, *, node: str, lease: float, connections: int) -> PostgresJournal:
        """Connect, create or migrate the schema; :class:`JournalUnavailableError` if it cannot."""
        timeout = max(5.0, lease)
        try:
            async with await psycopg.AsyncConnection.connect(
                dsn, autocommit=True, connect_timeout=round(timeout)
            ) as connection:
                await prepare(connection)
        except psycopg.Error as error:
            raise JournalUnavailableError(
                f"cannot use the PostgreSQL journal (journal.dsn): {_reason(error)}; check that the "
                "database runs, is reachable from this host, and that the user may create tables in it"
            ) from None
        pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            dsn,
            min_size=1,
            max_size=max(2, connections),
            open=False,
            timeout=timeout,
            # A chain of reconnection attempts backs off 1 s, 2 s, 4 s, ... without bound, so one
            # that ran through a long outage would wait about as long again once the database is
            # back. Each chain gives up after a few seconds instead (at most 2 s between attempts),
            # and the next statement that finds no connection starts a fresh one: the pool keeps
            # trying for as long as the daemon runs, and reconnects soon after the database returns.
            reconnect_timeout=_RECONNECT_CHAIN,
            kwargs={"autocommit": True, "row_factory": dict_row, "connect_timeout": round(timeout)},
            configure=_configure(timeout),
            name=f"uploader-journal-{node}",
        )
        try:
            await pool.open(wait=True, timeout=timeout)
        except PoolTimeout:
            await pool.close()
            raise JournalUnavailableError(
                "cannot connect to the PostgreSQL journal (journal.dsn) a second time: check the "
                "server's max_connections"
            ) from None
        return cls(pool, node=node, lease=lease)

    async def close(self) -> None:
        self._closed = True
        for task in (self._heartbeat, self._checking):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self._pool.close()

    async def journal_id(self) -> str:
        rows = await self._query("SELECT value FROM uploader_meta WHERE key = 'journal_id'")
        return str(rows[0]["value"])

    # --- what the group shares -------------------------------------------------------

    @property
    def takeover_every(self) -> float | None:
        """How often a target looks for work other nodes left (:meth:`claimable`)."""
        return self._lease / 3

    async def claimable(self, target: str) -> list[tuple[int, str]]:
        """``(record_id, path)`` of rows any node may claim now: pending (backoff over), or abandoned."""
        rows = await self._query(
            f"SELECT id, path FROM uploader_files WHERE target = %s AND state IN {_ACTIVE} "  # noqa: S608
            f"AND {_TAKEABLE} ORDER BY id LIMIT {_TAKEOVER_BATCH}",
            (target,),
        )
        return [(row["id"], _loaded(row["path"])) for row in rows]

    def holds(self, claim: Claim) -> bool:
        """Whether this node's claim is still alive by its own clock, with room for a move."""
        return self._leases.alive(claim.record_id, claim.fence, margin=self._lease / 10)

    def lease_watch(self, claim: Claim) -> asyncio.Event | None:
        """Set when the claim is lost: the worker stops at once."""
        return self._leases.watch(claim.record_id, claim.fence)

    def unreachable(self) -> str | None:
        down_for = self._reachability.down_for
        if down_for is None:
            return None
        return f"the PostgreSQL journal has not answered for {down_for:.0f} s"

    # --- discovery -------------------------------------------------------------------

    async def admit(self, target: str, path: str, identity: FileIdentity, now: float) -> FileRecord | None:
        values = {
            "target": target,
            "path": os.fsencode(path),
            "size": identity.size,
            "mtime_ns": identity.mtime_ns,
            "inode": identity.inode,
            "device": identity.device,
            "key": uuid.uuid4().hex,
            "now": now,
        }
        inserted = await self._query(
            "INSERT INTO uploader_files (target, path, size, mtime_ns, inode, device, state, "  # noqa: S608
            "idempotency_key, discovered_at, updated_at) "
            "SELECT %(target)s, %(path)s, %(size)s, %(mtime_ns)s, %(inode)s, %(device)s, 'pending', "
            "%(key)s, %(now)s, %(now)s WHERE NOT EXISTS (SELECT 1 FROM uploader_files WHERE "
            "target = %(target)s AND path = %(path)s AND size = %(size)s AND mtime_ns = %(mtime_ns)s "
            f"AND disposition IN {_SETTLED} AND (inode IS NULL OR %(inode)s::numeric IS NULL "
            "OR inode = %(inode)s::numeric)) "
            f"ON CONFLICT (target, path) WHERE state IN {_ACTIVE} DO NOTHING RETURNING *",
            values,
        )
        if inserted:
            return _record(inserted[0])
        active = await self._query(
            f"SELECT * FROM uploader_files WHERE target = %s AND path = %s AND state IN {_ACTIVE}",  # noqa: S608
            (target, values["path"]),
        )
        if not active or active[0]["state"] != FileState.PENDING:
            return None  # settled in place; or claimed or delivered (by any node)
        record = _record(active[0])
        if record.identity.same_version(identity):
            return record
        # Another version while waiting: its own checkpoint, attempts and key (see sqlite.py).
        # Only while nobody holds it: a node that claimed it meanwhile sees the change itself.
        updated = await self._query(
            "UPDATE uploader_files SET size = %s, mtime_ns = %s, inode = %s, device = %s, next_step = 0, "
            "step_in_flight = NULL, outputs = '{}', attempts = 0, last_error = NULL, last_status = NULL, "
            "not_before = NULL, idempotency_key = %s, updated_at = %s "
            "WHERE id = %s AND state = 'pending' RETURNING *",
            (
                identity.size,
                identity.mtime_ns,
                identity.inode,
                identity.device,
                uuid.uuid4().hex,
                now,
                record.id,
            ),
        )
        return _record(updated[0]) if updated else None

    async def is_settled(self, target: str, path: str, identity: FileIdentity) -> bool:
        rows = await self._query(
            "SELECT inode FROM uploader_files WHERE target = %s AND path = %s AND size = %s "  # noqa: S608
            f"AND mtime_ns = %s AND disposition IN {_SETTLED}",
            (target, os.fsencode(path), identity.size, identity.mtime_ns),
        )
        return any(
            FileIdentity(identity.size, identity.mtime_ns, _integer(row["inode"])).same_version(identity)
            for row in rows
        )

    # --- claims ----------------------------------------------------------------------

    async def claim(self, record_id: int, owner: str, now: float) -> Claim | None:
        sent_at = self._leases.sent_at()
        rows = await self._query(
            "UPDATE uploader_files AS f SET "  # noqa: S608
            "state = CASE WHEN f.state = 'delivered' THEN 'delivered' ELSE 'uploading' END, "
            "owner = %(owner)s, fence = f.fence + 1, "
            "lease_expires = now() + make_interval(secs => %(lease)s), "
            "updated_at = %(now)s FROM (SELECT id FROM uploader_files WHERE id = %(id)s "
            f"AND state IN {_ACTIVE} AND ({_TAKEABLE} OR owner = %(owner)s) FOR UPDATE SKIP LOCKED) AS c "
            "WHERE f.id = c.id RETURNING f.*",
            {"owner": owner, "lease": self._lease, "now": now, "id": record_id},
        )
        if not rows:
            return None
        row = rows[0]
        self._leases.hold(record_id, row["fence"], sent_at)
        self._start_heartbeat()
        return Claim(_record(row), owner, row["fence"])

    async def release_claims(self, owner: str, now: float) -> int:
        released = await self._query(
            "UPDATE uploader_files SET state = 'pending', owner = NULL, lease_expires = NULL, "
            "updated_at = %s WHERE owner = %s AND state = 'uploading' RETURNING id",
            (now, owner),
        )
        await self._query(
            "UPDATE uploader_files SET owner = NULL, lease_expires = NULL "
            "WHERE owner = %s AND state = 'delivered'",
            (owner,),
        )
        if owner == self._node:
            self._leases.clear()
        return len(released)

    # --- a delivery's progress -------------------------------------------------------

    async def step_started(self, claim: Claim, step: int, plan: str, now: float) -> None:
        await self._update(claim, now, state=FileState.UPLOADING, step_in_flight=step, plan=plan)

    async def step_finished(
        self, claim: Claim, step: int, outputs: dict[str, Any], now: float, *, last: bool = False
    ) -> None:
        columns: dict[str, Any] = {"next_step": step + 1, "step_in_flight": None, "outputs": Jsonb(outputs)}
        if last:
            columns["state"] = FileState.DELIVERED
        await self._update(claim, now, **columns)

    async def resume_at(self, claim: Claim, step: int, outputs: dict[str, Any], now: float) -> None:
        await self._update(claim, now, next_step=step, step_in_flight=None, outputs=Jsonb(outputs))

    async def delivered(self, claim: Claim, now: float) -> None:
        await self._update(claim, now, state=FileState.DELIVERED, step_in_flight=None)

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
        # The backoff is kept in the database's clock: other nodes compare it with theirs.
        assignments = (
            "state = 'pending', owner = NULL, lease_expires = NULL, updated_at = %(now)s, "
            f"not_before = CASE WHEN %(not_before)s::float8 IS NULL THEN NULL "
            f"ELSE {_NOW} + %(not_before)s::float8 - %(now)s END"
        )
        values: dict[str, Any] = {"now": now, "not_before": not_before, "error": error, "status": status}
        if failed_attempt:
            assignments += ", attempts = attempts + 1, last_error = %(error)s, last_status = %(status)s"
        elif error is not None:
            assignments += ", last_error = %(error)s"
        rows = await self._fenced(
            claim, assignments, values, extra="AND state IN ('pending', 'uploading') RETURNING *", lost=False
        )
        if not rows:
            # Delivered: never pending again; only the claim is given back (for filing away).
            rows = await self._fenced(
                claim, "owner = NULL, lease_expires = NULL", {}, extra="AND state = 'delivered' RETURNING *"
            )
        return _record(rows[0])

    async def finish(
        self, claim: Claim, disposition: Disposition, destination: str | None, now: float
    ) -> None:
        await self._update(
            claim,
            now,
            final=True,
            state=FileState.DONE,
            disposition=disposition,
            destination=os.fsencode(destination) if destination is not None else None,
            last_error=None,
            owner=None,
            lease_expires=None,
        )

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
        await self._update(
            claim,
            now,
            final=True,
            **counted,
            state=FileState.FAILED,
            last_error=error,
            last_status=status,
            disposition=disposition,
            destination=os.fsencode(destination) if destination is not None else None,
            owner=None,
            lease_expires=None,
        )

    async def forget(self, claim: Claim, now: float) -> None:
        await self._update(
            claim,
            now,
            final=True,
            state=FileState.GONE,
            disposition=Disposition.VANISHED,
            owner=None,
            lease_expires=None,
        )

    async def delivered_before(self, record: FileRecord) -> bool:
        rows = await self._query(
            "SELECT inode FROM uploader_files WHERE target = %s AND path = %s AND size = %s "
            "AND mtime_ns = %s "
            "AND id <> %s AND state = 'done' AND disposition IN ('archived', 'deleted')",
            (record.target, os.fsencode(record.path), record.size, record.mtime_ns, record.id),
        )
        identity = record.identity
        return any(
            FileIdentity(identity.size, identity.mtime_ns, _integer(row["inode"])).same_version(identity)
            for row in rows
        )

    # --- reading ---------------------------------------------------------------------

    async def unfinished(self, target: str) -> list[FileRecord]:
        rows = await self._query(
            "SELECT * FROM uploader_files WHERE target = %s AND state IN ('pending', 'delivered') "
            "ORDER BY id",
            (target,),
        )
        return [_record(row) for row in rows]

    async def get(self, record_id: int) -> FileRecord:
        rows = await self._query("SELECT * FROM uploader_files WHERE id = %s", (record_id,))
        if not rows:
            raise KeyError(record_id)
        return _record(rows[0])

    async def counts(self, target: str) -> TargetCounts:
        rows = await self._query(
            "SELECT state, count(*) AS n FROM uploader_files WHERE target = %s GROUP BY state", (target,)
        )
        by_state = {row["state"]: row["n"] for row in rows}
        last = await self._query(
            "SELECT last_error, updated_at FROM uploader_files WHERE target = %s AND last_error IS NOT NULL "
            "ORDER BY updated_at DESC LIMIT 1",
            (target,),
        )
        return TargetCounts(
            pending=by_state.get(FileState.PENDING, 0),
            uploading=by_state.get(FileState.UPLOADING, 0) + by_state.get(FileState.DELIVERED, 0),
            done=by_state.get(FileState.DONE, 0),
            failed=by_state.get(FileState.FAILED, 0),
            last_error=last[0]["last_error"] if last else None,
            last_error_at=last[0]["updated_at"] if last else None,
        )

    async def records(
        self, target: str | None = None, states: Sequence[FileState] = (), limit: int | None = None
    ) -> list[FileRecord]:
        conditions: list[str] = []
        values: list[Any] = []
        if target is not None:
            conditions.append("target = %s")
            values.append(target)
        if states:
            conditions.append("state = ANY(%s)")
            values.append([str(state) for state in states])
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        bound = f"LIMIT {int(limit)}" if limit is not None else ""
        rows = await self._query(
            f"SELECT * FROM uploader_files {where} ORDER BY updated_at DESC, id DESC {bound}",  # noqa: S608
            values,
        )
        return [_record(row) for row in rows]

    async def prune(self, older_than: float) -> int:
        rows = await self._query(
            "DELETE FROM uploader_files WHERE state IN ('done', 'failed', 'gone') AND updated_at < %s "  # noqa: S608
            f"AND (disposition IS NULL OR disposition NOT IN {_SETTLED}) RETURNING id",
            (older_than,),
        )
        return len(rows)

    # --- fenced writes ---------------------------------------------------------------

    async def _update(self, claim: Claim, now: float, *, final: bool = False, **columns: Any) -> None:
        assignments = ", ".join(f"{name} = %({name})s" for name in columns)
        await self._fenced(
            claim, f"{assignments}, updated_at = %(now)s", {**columns, "now": now}, final=final
        )

    async def _fenced(
        self,
        claim: Claim,
        assignments: str,
        values: dict[str, Any],
        *,
        extra: str = "",
        final: bool = True,
        lost: bool = True,
    ) -> list[DictRow]:
        """Write under the claim: matches only while ``owner`` and ``fence`` are still this claim's.

        No row matched means the claim was lost, unless ``lost`` is false (``extra`` narrowed
        the write and the caller has another one to try).
        """
        rows = await self._query(
            f"UPDATE uploader_files SET {assignments} "  # noqa: S608 -- the names are ours
            f"WHERE id = %(claim_id)s AND owner = %(claim_owner)s AND fence = %(claim_fence)s "
            f"{extra or 'RETURNING id'}",
            {**values, "claim_id": claim.record_id, "claim_owner": claim.owner, "claim_fence": claim.fence},
        )
        if not rows and not lost:
            return rows
        if not rows:
            self._leases.lose(claim.record_id, claim.fence)
            raise LeaseLostError(f"the claim on {claim.record.path} (fence {claim.fence}) was taken over")
        if final:
            self._leases.drop(claim.record_id)
        return rows

    # --- the heartbeat ---------------------------------------------------------------

    def _start_heartbeat(self) -> None:
        if self._heartbeat is None and not self._closed:
            self._heartbeat = asyncio.get_running_loop().create_task(self._beat(), name="journal-heartbeat")

    async def _beat(self) -> None:
        """Renew this node's leases every lease/3 while it holds any; lose those not renewed in time."""
        try:
            while self._leases:
                wake_at = self._monotonic() + self._lease / 3
                deadline = self._leases.next_deadline()
                if deadline is not None:
                    wake_at = min(wake_at, deadline)
                await asyncio.sleep(max(0.0, wake_at - self._monotonic()))
                for record_id in self._leases.expire():
                    self._log.warning(
                        "claim_expired",
                        record=record_id,
                        reason="its lease ran out before a renewal got through (the journal did not "
                        "answer in time, or this process was paused)",
                    )
                if self._leases:
                    await self._renew()
        finally:
            self._heartbeat = None

    async def _renew(self) -> None:
        fences = self._leases.fences()
        sent_at = self._leases.sent_at()
        try:
            rows = await self._query(
                "UPDATE uploader_files SET lease_expires = now() + make_interval(secs => %s) "  # noqa: S608
                f"WHERE id = ANY(%s) AND owner = %s AND state IN {_ACTIVE} RETURNING id, fence",
                (self._lease, list(fences), self._node),
                timeout=self._lease / 3,
            )
        except JournalUnavailableError:
            return  # logged once; each claim is lost at its own deadline unless a renewal gets through
        renewed = {(row["id"], row["fence"]) for row in rows}
        self._leases.renewed(renewed, sent_at)
        for record_id, fence in fences.items():
            if (record_id, fence) not in renewed:
                self._leases.lose(record_id, fence)

    # --- statements ------------------------------------------------------------------

    async def _query(
        self, query: str, parameters: Sequence[Any] | dict[str, Any] = (), *, timeout: float | None = None
    ) -> list[DictRow]:
        """Run one autocommit statement; its rows (none for a statement without a result)."""
        sent_at = self._reachability.sent_at()
        try:
            async with asyncio.timeout(timeout or max(5.0, self._lease)):
                async with self._pool.connection() as connection:
                    sent_at = self._reachability.sent_at()
                    cursor = await connection.execute(query, parameters)
                    rows = await cursor.fetchall() if cursor.description is not None else []
        except (psycopg.OperationalError, PoolTimeout, TimeoutError) as error:
            self._database_down(error, sent_at)
            raise JournalUnavailableError(
                f"the PostgreSQL journal did not answer: {_reason(error)}"
            ) from None
        if (down_for := self._reachability.answered(sent_at)) is not None:
            self._log.info("journal_reachable", down_seconds=round(down_for, 1))
        return rows

    def _database_down(self, error: BaseException, sent_at: float) -> None:
        if self._reachability.failed(sent_at):
            self._log.error(
                "journal_unreachable",
                error=_reason(error),
                action="claiming nothing and waiting for the database; claims held now are given up at "
                "their lease deadline",
            )
        # Connections broken by the outage are dropped now, not handed to the next statement.
        if not self._closed and self._checking is None:
            self._checking = asyncio.get_running_loop().create_task(self._check_pool())

    async def _check_pool(self) -> None:
        try:
            await self._pool.check()
        except Exception as error:  # the check only tidies; the next statement reports for itself
            self._log.debug("journal_pool_check_failed", error=str(error))
        finally:
            self._checking = None


def _configure(timeout: float) -> Callable[[Connection], Any]:
    async def configure(connection: Connection) -> None:
        # A statement stuck on a lock or a dying server must not hold a worker for ever.
        await connection.execute(f"SET statement_timeout = '{round(timeout * 1000)}ms'".encode())

    return configure


def _reason(error: BaseException) -> str:
    """The first line of a database error, or its kind (never the DSN: it may hold a password)."""
    if isinstance(error, TimeoutError):
        return "no answer in time"
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _loaded(value: bytes | memoryview) -> str:
    return os.fsdecode(bytes(value))


def _integer(value: Any) -> int | None:
    return int(value) if value is not None else None


def _record(row: DictRow) -> FileRecord:
    disposition = row["disposition"]
    destination = row["destination"]
    return FileRecord(
        id=row["id"],
        target=row["target"],
        path=_loaded(row["path"]),
        identity=FileIdentity(row["size"], row["mtime_ns"], _integer(row["inode"]), _integer(row["device"])),
        state=FileState(row["state"]),
        attempts=row["attempts"],
        next_step=row["next_step"],
        step_in_flight=row["step_in_flight"],
        outputs=row["outputs"],
        plan=row["plan"],
        last_error=row["last_error"],
        last_status=row["last_status"],
        disposition=Disposition(disposition) if disposition else None,
        destination=_loaded(destination) if destination is not None else None,
        idempotency_key=row["idempotency_key"],
        owner=row["owner"],
        discovered_at=row["discovered_at"],
        updated_at=row["updated_at"],
    )
