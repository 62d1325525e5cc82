"""What only the shared PostgreSQL journal does, on a real server: races, leases, fencing, outages.

Two :class:`PostgresJournal` instances on one database, ``node-a`` and ``node-b``, stand for
two hosts of a group. The contract every journal keeps is in ``tests/unit/test_journal_claims.py``;
these tests are about what happens *between* nodes, and between a node and its database.
Rows are read and bent (a lease run out, a schema from the future) with plain SQL, next to
the journal rather than through it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator, MutableMapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, LiteralString

import psycopg
import pytest
from psycopg.rows import dict_row
from structlog.testing import capture_logs

from tests.postgres import PostgresServer
from uploader_daemon.errors import JournalUnavailableError
from uploader_daemon.identity import FileIdentity
from uploader_daemon.journal import Disposition, FileState
from uploader_daemon.journal.model import Claim, LeaseLostError
from uploader_daemon.journal.postgres import PostgresJournal

TARGET = "reports"
T0 = 1_700_000_000.0
A = FileIdentity(size=10, mtime_ns=1, inode=100)
LEASE = 10.0  # long enough that no lease runs out, nor a heartbeat fires, unless a test wants it
SHORT_LEASE = 1.5  # a heartbeat every 0.5 s; lost locally 1.5 s after the last renewal was sent
RACED_ROWS = 200
RACING_CONNECTIONS = 8
# How long a test waits for what normally takes milliseconds (a second or two after a restart).
DEADLINE = 3.0

Row = dict[str, Any]


# --- helpers -------------------------------------------------------------------------


async def sql(dsn: str, query: LiteralString, parameters: Sequence[Any] = ()) -> list[Row]:
    """Run one autocommit statement on its own connection; its rows as dicts."""
    async with await psycopg.AsyncConnection.connect(
        dsn, autocommit=True, row_factory=dict_row
    ) as connection:
        cursor = await connection.execute(query, parameters)
        return await cursor.fetchall() if cursor.description is not None else []


async def row_of(dsn: str, record_id: int) -> Row:
    rows = await sql(dsn, "SELECT * FROM uploader_files WHERE id = %s", (record_id,))
    assert 1 == len(rows), f"no row {record_id}"
    return rows[0]


async def expire_lease(dsn: str, record_id: int) -> None:
    """What the database sees when the row's owner stopped renewing: its lease is over."""
    await sql(
        dsn, "UPDATE uploader_files SET lease_expires = now() - interval '1 s' WHERE id = %s", (record_id,)
    )


async def opened(dsn: str, node: str, lease: float = LEASE, connections: int = 4) -> PostgresJournal:
    return await PostgresJournal.open(dsn, node=node, lease=lease, connections=connections)


@asynccontextmanager
async def two_nodes(
    dsn: str, lease_a: float = LEASE, lease_b: float = LEASE, connections: int = 4
) -> AsyncIterator[tuple[PostgresJournal, PostgresJournal]]:
    """``node-a`` and ``node-b`` on the same database, closed afterwards."""
    node_a = await opened(dsn, "node-a", lease_a, connections)
    try:
        node_b = await opened(dsn, "node-b", lease_b, connections)
        try:
            yield node_a, node_b
        finally:
            await node_b.close()
    finally:
        await node_a.close()


async def admitted(journal: PostgresJournal, path: str = "a.csv") -> int:
    record = await journal.admit(TARGET, path, A, T0)
    assert record is not None
    return record.id


async def claimed(journal: PostgresJournal, record_id: int, owner: str) -> Claim:
    claim = await journal.claim(record_id, owner, T0)
    assert claim is not None, f"{owner} could not claim row {record_id}"
    return claim


async def take_over(dsn: str, node_b: PostgresJournal, record_id: int) -> Claim:
    """Run the row's lease out and claim it as ``node-b``.

    Retried (within a deadline) because the holder's heartbeat may renew the lease between
    the two statements; that is the holder doing its job, not what the test is about.
    """
    deadline = time.monotonic() + DEADLINE
    while True:
        await expire_lease(dsn, record_id)
        claim = await node_b.claim(record_id, "node-b", T0 + 1)
        if claim is not None:
            return claim
        assert time.monotonic() < deadline, f"node-b could not take row {record_id} over"


async def until_it_answers(journal: PostgresJournal, within: float) -> None:
    """Retry a statement until the journal answers again; fail after ``within`` s.

    The deadline covers a statement that is still waiting for a connection, too.
    """
    try:
        async with asyncio.timeout(within):
            while True:
                try:
                    await journal.journal_id()
                    return
                except JournalUnavailableError:
                    await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"the journal did not answer again within {within}s") from None


def events(logs: Sequence[MutableMapping[str, Any]], name: str) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


@asynccontextmanager
async def row_locked(dsn: str, record_id: int) -> AsyncIterator[None]:
    """The row locked (``FOR UPDATE``) by a transaction of another connection, until exit."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as locker, locker.transaction():
        await locker.execute("SELECT 1 FROM uploader_files WHERE id = %s FOR UPDATE", (record_id,))
        yield


async def until_waiting_on_a_lock(dsn: str) -> None:
    """Until a backend of the database waits for a lock (within the deadline).

    Asked on a connection of its own: inside a transaction, pg_stat_activity is a snapshot.
    """
    query: LiteralString = (
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    async with asyncio.timeout(DEADLINE):
        while not await sql(dsn, query):
            await asyncio.sleep(0.01)


async def terminate_idle_backends(dsn: str) -> None:
    """What a shutting-down server does to each connection in turn; here to the idle ones."""
    await sql(
        dsn,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid() AND state = 'idle'",
    )


# --- admission and claims between nodes ----------------------------------------------


def test_concurrent_admissions_of_one_file_from_two_nodes_make_one_row(postgres_dsn: str) -> None:
    """Both nodes admitting the same files at once get the same record each, and one row per file."""
    paths = [f"file-{number:02}.csv" for number in range(40)]

    async def scenario() -> tuple[dict[str, set[int | None]], list[Row]]:
        async with two_nodes(postgres_dsn) as (node_a, node_b):
            calls = [
                journal.admit(TARGET, path, A, T0)
                for path in paths
                for journal in (node_a, node_b, node_a, node_b)
            ]
            records = await asyncio.gather(*calls)
            ids_by_path: dict[str, set[int | None]] = {path: set() for path in paths}
            for record, path in zip(records, (path for path in paths for _ in range(4)), strict=True):
                ids_by_path[path].add(None if record is None else record.id)
            rows = await sql(
                postgres_dsn,
                "SELECT convert_from(path, 'UTF8') AS path, count(*) AS n FROM uploader_files "
                "WHERE target = %s AND state IN ('pending', 'uploading', 'delivered') GROUP BY path",
                (TARGET,),
            )
            return ids_by_path, rows

    ids_by_path, rows = asyncio.run(scenario())
    assert all(len(ids) == 1 and None not in ids for ids in ids_by_path.values()), ids_by_path
    assert {path: 1 for path in paths} == {row["path"]: row["n"] for row in rows}


def test_admitting_a_file_another_node_holds_returns_none_and_adds_no_row(postgres_dsn: str) -> None:
    """A file claimed by node-a is not admitted again by node-b's scan."""

    async def scenario() -> tuple[object, int]:
        async with two_nodes(postgres_dsn) as (node_a, node_b):
            await claimed(node_a, await admitted(node_a), "node-a")
            again = await node_b.admit(TARGET, "a.csv", A, T0 + 1)
            rows = await sql(postgres_dsn, "SELECT count(*) AS n FROM uploader_files")
            return again, rows[0]["n"]

    assert (None, 1) == asyncio.run(scenario())


def test_two_nodes_racing_for_work_claim_every_row_exactly_once(postgres_dsn: str) -> None:
    """Both nodes listing and claiming the same rows at once never both get one, and leave none."""

    async def take_all(journal: PostgresJournal, owner: str, deadline: float) -> list[Claim]:
        taken: list[Claim] = []
        while listed := await journal.claimable(TARGET):
            assert time.monotonic() < deadline, f"{owner} still finds work to claim"
            results = await asyncio.gather(*(journal.claim(record_id, owner, T0) for record_id, _ in listed))
            taken.extend(claim for claim in results if claim is not None)
        return taken

    async def scenario() -> tuple[set[int], list[Claim], list[Claim], list[Row]]:
        # Wide pools: many claims of each node in flight at once, so that they collide.
        async with two_nodes(postgres_dsn, connections=RACING_CONNECTIONS) as (node_a, node_b):
            ids = {await admitted(node_a, f"file-{number:03}.csv") for number in range(RACED_ROWS)}
            deadline = time.monotonic() + DEADLINE
            by_a, by_b = await asyncio.gather(
                take_all(node_a, "node-a", deadline), take_all(node_b, "node-b", deadline)
            )
            rows = await sql(postgres_dsn, "SELECT id, owner, fence, state FROM uploader_files")
            return ids, by_a, by_b, rows

    ids, by_a, by_b, rows = asyncio.run(scenario())
    ids_a = {claim.record_id for claim in by_a}
    ids_b = {claim.record_id for claim in by_b}
    assert len(by_a) == len(ids_a), "node-a claimed a row twice"
    assert len(by_b) == len(ids_b), "node-b claimed a row twice"
    assert set() == ids_a & ids_b
    assert ids == ids_a | ids_b
    owners = {claim.record_id: claim.owner for claim in (*by_a, *by_b)}
    assert {row["id"]: (owners[row["id"]], 1, "uploading") for row in rows} == {
        row["id"]: (row["owner"], row["fence"], row["state"]) for row in rows
    }


def test_two_nodes_claiming_the_same_row_at_the_same_moment_never_both_get_it(postgres_dsn: str) -> None:
    """Row by row, both nodes claim at once: one of them wins each row, the other gets None."""

    async def scenario() -> tuple[list[tuple[bool, bool]], list[Row]]:
        async with two_nodes(postgres_dsn) as (node_a, node_b):
            ids = [await admitted(node_a, f"file-{number:03}.csv") for number in range(100)]
            winners: list[tuple[bool, bool]] = []
            for record_id in ids:
                by_a, by_b = await asyncio.gather(
                    node_a.claim(record_id, "node-a", T0), node_b.claim(record_id, "node-b", T0)
                )
                winners.append((by_a is not None, by_b is not None))
            rows = await sql(postgres_dsn, "SELECT fence, count(*) AS n FROM uploader_files GROUP BY fence")
            return winners, rows

    winners, rows = asyncio.run(scenario())
    assert [] == [pair for pair in winners if sum(pair) != 1], "both or neither node got a row"
    assert [(1, 100)] == [(row["fence"], row["n"]) for row in rows]


# --- fencing --------------------------------------------------------------------------


def test_writes_of_a_claim_taken_over_are_refused_and_change_nothing(postgres_dsn: str) -> None:
    """After node-b took a row whose lease ran out, node-a's writes raise LeaseLostError and touch nothing."""

    async def scenario() -> None:
        # A long lease: node-a's heartbeat does not fire during the test, so it is the refused
        # write itself that tells node-a's worker (the heartbeat has its own test).
        async with two_nodes(postgres_dsn) as (node_a, node_b):
            record_id = await admitted(node_a)
            old = await claimed(node_a, record_id, "node-a")
            watch = node_a.lease_watch(old)
            assert watch is not None
            await expire_lease(postgres_dsn, record_id)

            listed_for_b = await node_b.claimable(TARGET)
            new = await claimed(node_b, record_id, "node-b")
            before = await row_of(postgres_dsn, record_id)
            told_before_writing = watch.is_set()

            with pytest.raises(LeaseLostError):
                await node_a.step_started(old, 0, "plan-a", T0 + 2)
            told_after_writing = watch.is_set()
            for write in (
                lambda: node_a.step_finished(old, 0, {"url": "a"}, T0 + 3, last=True),
                lambda: node_a.finish(old, Disposition.ARCHIVED, "/sent/a.csv", T0 + 3),
                lambda: node_a.fail(old, "boom", 500, Disposition.PARKED, "/failed/a.csv", T0 + 3),
                lambda: node_a.release(old, T0 + 3, failed_attempt=True, error="x"),
                lambda: node_a.forget(old, T0 + 3),
            ):
                with pytest.raises(LeaseLostError):
                    await write()
            after = await row_of(postgres_dsn, record_id)
            # The new holder's writes still go through.
            await node_b.step_started(new, 0, "plan-b", T0 + 4)

            assert [(record_id, "a.csv")] == listed_for_b
            assert (old.fence + 1, "node-b") == (new.fence, new.owner)
            assert ("node-b", new.fence, "uploading") == (before["owner"], before["fence"], before["state"])
            assert before == after
            assert (False, True, False) == (told_before_writing, told_after_writing, node_a.holds(old))
            assert True is node_b.holds(new)

    asyncio.run(scenario())


def test_the_heartbeat_tells_the_worker_when_its_claim_was_taken_over(postgres_dsn: str) -> None:
    """A renewal that no longer matches the claim sets its watch event, well before its local deadline."""

    async def scenario() -> None:
        with capture_logs() as logs:
            async with two_nodes(postgres_dsn, lease_a=SHORT_LEASE) as (node_a, node_b):
                record_id = await admitted(node_a)
                old = await claimed(node_a, record_id, "node-a")
                watch = node_a.lease_watch(old)
                assert watch is not None
                new = await take_over(postgres_dsn, node_b, record_id)

                # The next heartbeat is at most lease/3 away; the local deadline a whole lease.
                await asyncio.wait_for(watch.wait(), timeout=SHORT_LEASE * 0.8)
                row = await row_of(postgres_dsn, record_id)

        assert False is node_a.holds(old)
        assert [] == events(logs, "claim_expired")  # lost by the renewal, not by the clock
        assert ("node-b", new.fence) == (row["owner"], row["fence"])

    asyncio.run(scenario())


def test_the_heartbeat_keeps_a_claim_alive_for_longer_than_its_lease(postgres_dsn: str) -> None:
    """Held for more than two leases, a claim is renewed in the database, alive here, and not takeable."""

    async def scenario() -> None:
        async with two_nodes(postgres_dsn, lease_a=SHORT_LEASE) as (node_a, node_b):
            record_id = await admitted(node_a)
            claimed_at = time.monotonic()
            claim = await claimed(node_a, record_id, "node-a")
            watch = node_a.lease_watch(claim)
            assert watch is not None
            expiries = [(await row_of(postgres_dsn, record_id))["lease_expires"]]
            # Time has to pass for a lease to run out: watch the claim for more than two leases.
            while time.monotonic() < claimed_at + 2 * SHORT_LEASE + 0.3:
                assert node_a.holds(claim), "the claim was lost while its heartbeat ran"
                assert None is await node_b.claim(record_id, "node-b", T0 + 1)
                lease_expires = (await row_of(postgres_dsn, record_id))["lease_expires"]
                if lease_expires != expiries[-1]:
                    expiries.append(lease_expires)
                await asyncio.sleep(0.1)
            listed_for_b = await node_b.claimable(TARGET)
            live = await sql(
                postgres_dsn,
                "SELECT lease_expires > now() AS live FROM uploader_files WHERE id = %s",
                (record_id,),
            )

            assert len(expiries) >= 3, f"the lease moved forward only {len(expiries) - 1} times"
            assert sorted(expiries) == expiries
            assert [] == listed_for_b
            assert (True, False, True) == (live[0]["live"], watch.is_set(), node_a.holds(claim))

    asyncio.run(scenario())


# --- the shared backoff and releases ------------------------------------------------


def test_the_backoff_of_a_failed_attempt_holds_for_every_node(postgres_dsn: str) -> None:
    """A row released with not_before in the future is not claimable by another node until then."""

    async def scenario() -> None:
        async with two_nodes(postgres_dsn) as (node_a, node_b):
            now = time.time()
            waits = {
                "later.csv": now + 30,
                "slightly-early.csv": now + 0.5,
                "now.csv": now,
                "past.csv": now - 60,
            }
            ids: dict[str, int] = {}
            for path, not_before in waits.items():
                claim = await claimed(node_a, await admitted(node_a, path), "node-a")
                released = await node_a.release(
                    claim, now, failed_attempt=True, error="x", not_before=not_before
                )
                assert (FileState.PENDING, 1, "x", None) == (
                    released.state,
                    released.attempts,
                    released.last_error,
                    released.owner,
                )
                ids[path] = claim.record_id

            listed = {path for _, path in await node_b.claimable(TARGET)}
            later = await node_b.claim(ids["later.csv"], "node-b", now)
            later_for_a = await node_a.claim(ids["later.csv"], "node-a", now)
            others = [await node_b.claim(ids[path], "node-b", now) for path in ("now.csv", "past.csv")]
            # A node's own backoff timer may fire a little early by the database's clock.
            early = await node_b.claim(ids["slightly-early.csv"], "node-b", now)

            assert {"slightly-early.csv", "now.csv", "past.csv"} == listed
            assert (None, None) == (later, later_for_a)
            assert all(claim is not None and claim.owner == "node-b" for claim in others)
            assert early is not None

    asyncio.run(scenario())


def test_releasing_a_nodes_claims_leaves_other_nodes_claims_alone(postgres_dsn: str) -> None:
    """release_claims(node-a) frees node-a's rows only; a delivered row stays delivered, without owner."""

    async def scenario() -> None:
        async with two_nodes(postgres_dsn) as (node_a, node_b):
            in_flight = await claimed(node_a, await admitted(node_a, "mine.csv"), "node-a")
            delivered = await claimed(node_a, await admitted(node_a, "delivered.csv"), "node-a")
            await node_a.step_finished(delivered, 0, {"url": "u"}, T0, last=True)
            theirs = await claimed(node_b, await admitted(node_b, "theirs.csv"), "node-b")
            theirs_before = await row_of(postgres_dsn, theirs.record_id)
            watch = node_a.lease_watch(in_flight)
            assert watch is not None

            released = await node_a.release_claims("node-a", T0 + 5)
            mine = await row_of(postgres_dsn, in_flight.record_id)
            kept = await row_of(postgres_dsn, delivered.record_id)
            theirs_after = await row_of(postgres_dsn, theirs.record_id)

            assert 1 == released
            assert ("pending", None, None) == (mine["state"], mine["owner"], mine["lease_expires"])
            assert ("delivered", None, None, {"url": "u"}) == (
                kept["state"],
                kept["owner"],
                kept["lease_expires"],
                kept["outputs"],
            )
            assert theirs_before == theirs_after
            assert ("uploading", "node-b") == (theirs_after["state"], theirs_after["owner"])
            assert (True, False, True) == (watch.is_set(), node_a.holds(in_flight), node_b.holds(theirs))

    asyncio.run(scenario())


# --- what is takeable ---------------------------------------------------------------


def test_a_delivered_row_whose_lease_ran_out_is_taken_over_and_stays_delivered(postgres_dsn: str) -> None:
    """The node that files away a delivered file can die too; another node files it, never resends it."""

    async def scenario() -> None:
        async with two_nodes(postgres_dsn) as (node_a, node_b):
            record_id = await admitted(node_a)
            claim = await claimed(node_a, record_id, "node-a")
            await node_a.step_finished(claim, 0, {"url": "u"}, T0, last=True)
            listed_while_held = await node_b.claimable(TARGET)
            refused_while_held = await node_b.claim(record_id, "node-b", T0 + 1)
            await expire_lease(postgres_dsn, record_id)

            listed = await node_b.claimable(TARGET)
            taken = await claimed(node_b, record_id, "node-b")
            row = await row_of(postgres_dsn, record_id)

            assert ([], None) == (listed_while_held, refused_while_held)
            assert [(record_id, "a.csv")] == listed
            assert (FileState.DELIVERED, {"url": "u"}, claim.fence + 1) == (
                taken.record.state,
                taken.record.outputs,
                taken.fence,
            )
            assert ("delivered", "node-b", taken.fence) == (row["state"], row["owner"], row["fence"])

    asyncio.run(scenario())


def test_an_unfinished_row_without_owner_or_lease_is_takeable(postgres_dsn: str) -> None:
    """An uploading or delivered row with no owner or no lease is abandoned work; any node may take it."""

    async def scenario() -> None:
        async with two_nodes(postgres_dsn) as (node_a, node_b):
            no_lease = await claimed(node_a, await admitted(node_a, "no-lease.csv"), "node-a")
            no_owner = await claimed(node_a, await admitted(node_a, "no-owner.csv"), "node-a")
            held = await claimed(node_a, await admitted(node_a, "held.csv"), "node-a")
            await sql(
                postgres_dsn,
                "UPDATE uploader_files SET lease_expires = NULL WHERE id = %s",
                (no_lease.record_id,),
            )
            await sql(
                postgres_dsn, "UPDATE uploader_files SET owner = NULL WHERE id = %s", (no_owner.record_id,)
            )

            listed = {path for _, path in await node_b.claimable(TARGET)}
            taken = [
                await node_b.claim(claim.record_id, "node-b", T0) for claim in (no_lease, no_owner, held)
            ]

            assert {"no-lease.csv", "no-owner.csv"} == listed
            assert [True, True, False] == [claim is not None for claim in taken]

    asyncio.run(scenario())


def test_a_pending_row_is_takeable_whatever_owner_and_lease_it_still_names(postgres_dsn: str) -> None:
    """Pending means nobody works on it: a stale owner and a live lease on it stop no node."""

    async def scenario() -> Claim | None:
        async with two_nodes(postgres_dsn) as (node_a, node_b):
            record_id = await admitted(node_a)
            await sql(
                postgres_dsn,
                "UPDATE uploader_files SET owner = 'node-c', lease_expires = now() + interval '60 s' "
                "WHERE id = %s",
                (record_id,),
            )
            assert [(record_id, "a.csv")] == await node_b.claimable(TARGET)
            return await node_b.claim(record_id, "node-b", T0)

    taken = asyncio.run(scenario())
    assert taken is not None
    assert ("node-b", FileState.UPLOADING) == (taken.owner, taken.record.state)


def test_finished_rows_are_never_claimable_even_without_owner(postgres_dsn: str) -> None:
    """Done, failed and gone rows are history: no node lists or claims them."""

    async def scenario() -> tuple[list[tuple[int, str]], list[Claim | None]]:
        async with two_nodes(postgres_dsn) as (node_a, node_b):
            done = await claimed(node_a, await admitted(node_a, "done.csv"), "node-a")
            await node_a.finish(done, Disposition.ARCHIVED, "/sent/done.csv", T0)
            failed = await claimed(node_a, await admitted(node_a, "failed.csv"), "node-a")
            await node_a.fail(failed, "400", 400, Disposition.PARKED, "/failed/failed.csv", T0)
            gone = await claimed(node_a, await admitted(node_a, "gone.csv"), "node-a")
            await node_a.forget(gone, T0)
            finished = (done, failed, gone)
            return (
                await node_b.claimable(TARGET),
                [await node_b.claim(claim.record_id, "node-b", T0) for claim in finished],
            )

    assert ([], [None, None, None]) == asyncio.run(scenario())


# --- the schema ---------------------------------------------------------------------


def test_nodes_opening_a_fresh_journal_at_once_make_one_schema_and_one_journal_id(postgres_dsn: str) -> None:
    """Four nodes starting together migrate once, under the advisory lock, and agree on the journal id."""

    async def scenario() -> tuple[list[BaseException], set[str], list[Row], list[Row]]:
        results = await asyncio.gather(
            *(opened(postgres_dsn, f"node-{number}") for number in range(4)), return_exceptions=True
        )
        journals = [result for result in results if isinstance(result, PostgresJournal)]
        try:
            failures = [result for result in results if isinstance(result, BaseException)]
            ids = {await journal.journal_id() for journal in journals}
        finally:
            for journal in journals:
                await journal.close()
        meta = await sql(postgres_dsn, "SELECT key, value FROM uploader_meta ORDER BY key")
        tables = await sql(
            postgres_dsn,
            "SELECT relname FROM pg_class WHERE relname LIKE 'uploader_%%' AND relkind = 'r' "
            "ORDER BY relname",
        )
        return failures, ids, meta, tables

    failures, ids, meta, tables = asyncio.run(scenario())
    assert [] == failures
    assert 1 == len(ids)
    assert [("journal_id", ids.pop()), ("schema_version", "1")] == [
        (row["key"], row["value"]) for row in meta
    ]
    assert ["uploader_files", "uploader_meta"] == [row["relname"] for row in tables]


def test_a_journal_with_a_newer_schema_is_refused_and_left_as_it_is(postgres_dsn: str) -> None:
    """A node older than the group's schema does not start, and says to upgrade it."""

    async def scenario() -> tuple[str, list[Row]]:
        journal = await opened(postgres_dsn, "node-a")
        await journal.close()
        await sql(postgres_dsn, "UPDATE uploader_meta SET value = '99' WHERE key = 'schema_version'")
        with pytest.raises(JournalUnavailableError) as refused:
            await opened(postgres_dsn, "node-b")
        return str(refused.value), await sql(
            postgres_dsn, "SELECT value FROM uploader_meta WHERE key = 'schema_version'"
        )

    message, version = asyncio.run(scenario())
    assert "schema 99" in message
    assert "upgrade this node" in message
    assert [{"value": "99"}] == version


# --- names --------------------------------------------------------------------------


def test_a_name_that_is_not_utf8_comes_back_byte_for_byte(postgres_dsn: str) -> None:
    """Linux allows any bytes in a name; the journal returns the very str it was given (surrogates kept)."""
    path = os.fsdecode(b"caf\xe9.csv")
    destination = os.fsdecode(b"/sent/caf\xe9.csv")

    async def scenario() -> list[str | None]:
        async with two_nodes(postgres_dsn) as (node_a, node_b):
            record_id = await admitted(node_a, path)
            found = [
                (await node_a.get(record_id)).path,
                *(record.path for record in await node_b.records(TARGET)),
                *(listed for _, listed in await node_b.claimable(TARGET)),
            ]
            claim = await claimed(node_b, record_id, "node-b")
            await node_b.finish(claim, Disposition.ARCHIVED, destination, T0)
            stored = await row_of(postgres_dsn, record_id)
            record = await node_a.get(record_id)
            assert b"caf\xe9.csv" == bytes(stored["path"])
            return [*found, claim.record.path, record.path, record.destination]

    assert [path, path, path, path, path, destination] == asyncio.run(scenario())


# --- a database that does not answer --------------------------------------------------


def closed_tcp_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.mark.parametrize("where", ["missing socket directory", "closed tcp port"])
def test_a_journal_that_cannot_be_reached_at_start_is_refused_quickly_without_the_password(
    where: str, tmp_path: Path
) -> None:
    """Opening an unreachable journal fails at once with JournalUnavailableError: journal.dsn, no password."""
    if where == "missing socket directory":
        dsn = f"postgresql://uploader:secret-pw@/journal?host={tmp_path / 'no-such-dir'}"
    else:
        dsn = f"postgresql://uploader:secret-pw@127.0.0.1:{closed_tcp_port()}/journal"

    started = time.monotonic()
    with pytest.raises(JournalUnavailableError) as refused:
        asyncio.run(opened(dsn, "node-a"))
    elapsed = time.monotonic() - started

    message = str(refused.value)
    assert "secret-pw" not in message
    assert "journal.dsn" in message
    assert elapsed < DEADLINE, f"refusing took {elapsed:.1f}s"


def test_an_outage_is_reported_once_and_its_end_once(
    postgres_server: PostgresServer, postgres_dsn: str
) -> None:
    """Down: statements raise JournalUnavailableError; one event when it goes, one when it comes back.

    The slowest test here (about 6 s): a statement that finds no connection waits for the
    pool's timeout (5 s, the least ``open`` sets, for a lease of 5 s or less) before it
    reports the outage.
    """

    async def scenario() -> None:
        with capture_logs() as logs:
            journal = await opened(postgres_dsn, "node-a", lease=SHORT_LEASE)
            try:
                await journal.journal_id()
                before = journal.unreachable()
                await asyncio.to_thread(postgres_server.stop)

                with pytest.raises(JournalUnavailableError) as first:
                    await journal.journal_id()
                # Several more, at once: each waits for a connection that does not come.
                later = await asyncio.gather(
                    journal.journal_id(),
                    journal.claimable(TARGET),
                    journal.counts(TARGET),
                    return_exceptions=True,
                )
                sentence = journal.unreachable()
                down_events_while_down = len(events(logs, "journal_unreachable"))

                await asyncio.to_thread(postgres_server.start)
                await until_it_answers(journal, within=DEADLINE)
                after = journal.unreachable()
                await journal.counts(TARGET)  # more statements: no more events
            finally:
                await journal.close()

        assert None is before
        assert str(first.value).startswith("the PostgreSQL journal did not answer")
        assert all(isinstance(error, JournalUnavailableError) for error in later), later
        assert sentence is not None
        assert sentence.startswith("the PostgreSQL journal has not answered for")
        assert 1 == down_events_while_down
        down = events(logs, "journal_unreachable")
        back = events(logs, "journal_reachable")
        assert (1, "error", "node-a") == (len(down), down[0]["log_level"], down[0]["node"])
        assert (1, "info") == (len(back), back[0]["log_level"])
        assert back[0]["down_seconds"] > 0
        assert None is after

    try:
        asyncio.run(scenario())
    finally:
        if not postgres_server.is_running():
            postgres_server.start()  # the session's other tests need it


def test_a_statement_sent_before_an_outage_was_noticed_does_not_end_it(postgres_dsn: str) -> None:
    """As PostgreSQL shuts down, connections fail one by one: the log says down once, up once.

    One statement waits on a row lock while every idle connection of the pool is
    terminated, so the next statement fails (the outage is noticed). The waiting one then
    succeeds on its own, older connection: that proves nothing, and the journal stays down
    until a statement sent afterwards gets through.
    """

    async def scenario() -> tuple[list[str], str | None, str | None]:
        with capture_logs() as logs:
            journal = await opened(postgres_dsn, "node-a")
            try:
                record_id = await admitted(journal)
                claim = await claimed(journal, record_id, "node-a")
                # Enough idle connections in the pool that the next statement takes a dead one.
                await asyncio.gather(*(journal.journal_id() for _ in range(8)))
                async with row_locked(postgres_dsn, record_id):
                    finishing = asyncio.ensure_future(journal.finish(claim, Disposition.ARCHIVED, "a", T0))
                    await until_waiting_on_a_lock(postgres_dsn)
                    await terminate_idle_backends(postgres_dsn)
                    with pytest.raises(JournalUnavailableError):
                        await journal.journal_id()
                await finishing  # the lock is gone: the older statement succeeds
                still_down = journal.unreachable()
                await until_it_answers(journal, within=DEADLINE)
                after = journal.unreachable()
            finally:
                await journal.close()
        return [entry["event"] for entry in logs if entry["event"].startswith("journal_")], still_down, after

    seen, still_down, after = asyncio.run(scenario())
    assert ["journal_unreachable", "journal_reachable"] == seen
    assert still_down is not None
    assert after is None


def test_a_claim_is_lost_at_its_own_deadline_while_the_database_is_down(
    postgres_server: PostgresServer, postgres_dsn: str
) -> None:
    """Cut off from the journal, a node drops its claim as its lease runs out: not before, not much after."""

    async def scenario() -> None:
        with capture_logs() as logs:
            journal = await opened(postgres_dsn, "node-a", lease=SHORT_LEASE)
            try:
                record_id = await admitted(journal)
                claimed_at = time.monotonic()
                claim = await claimed(journal, record_id, "node-a")
                watch = journal.lease_watch(claim)
                assert watch is not None
                await asyncio.to_thread(postgres_server.stop)
                stopped_at = time.monotonic()  # any renewal that got through was sent before this
                told_while_stopping = watch.is_set()

                await asyncio.wait_for(watch.wait(), timeout=SHORT_LEASE + DEADLINE)
                lost_at = time.monotonic()
                holds = journal.holds(claim)
                down_events = len(events(logs, "journal_unreachable"))
            finally:
                await journal.close()

        assert False is told_while_stopping
        assert lost_at - claimed_at >= SHORT_LEASE, "lost before its lease ran out"
        # Its deadline is at most a lease after the stop; a renewal in flight may delay the
        # heartbeat's check by its own timeout (lease/3).
        assert lost_at - stopped_at < SHORT_LEASE * (1 + 1 / 3) + 0.3, "lost long after its deadline"
        assert False is holds
        assert [record_id] == [entry["record"] for entry in events(logs, "claim_expired")]
        assert 1 == down_events  # the heartbeat's failed renewals are one outage

    try:
        asyncio.run(scenario())
    finally:
        if not postgres_server.is_running():
            postgres_server.start()
