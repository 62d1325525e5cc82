"""The claim-based journal interface: claims, owners, releases, dispositions, schema 3.

Each test runs against every backend (the ``run`` fixture: SQLite in memory, and the
shared PostgreSQL journal on a real server), so they are the contract a journal implements.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from uploader_daemon.identity import FileIdentity
from uploader_daemon.journal import Disposition, FileState, Journal, SqliteJournal

T0 = 1_700_000_000.0
A = FileIdentity(size=10, mtime_ns=1, inode=100)


Scenario = Callable[[Journal], Awaitable[Any]]


@pytest.fixture(params=["sqlite", "postgresql"])
def run(request: pytest.FixtureRequest) -> Callable[[Scenario], Any]:
    """``run(scenario)``: the scenario against a fresh journal of this backend, its result."""
    if request.param == "postgresql":
        dsn = request.getfixturevalue("postgres_dsn")

    async def opened() -> Journal:
        if request.param == "sqlite":
            return SqliteJournal.open(":memory:")
        from uploader_daemon.journal.postgres import PostgresJournal

        return await PostgresJournal.open(dsn, node="node-a", lease=10.0, connections=4)

    def run_scenario(scenario: Scenario) -> Any:
        async def main() -> Any:
            journal = await opened()
            try:
                return await scenario(journal)
            finally:
                await journal.close()

        return asyncio.run(main())

    return run_scenario


async def claimed(journal: Journal, path: str = "a.csv", owner: str = "node-a") -> Any:
    record = await journal.admit("reports", path, A, T0)
    assert record is not None
    claim = await journal.claim(record.id, owner, T0)
    assert claim is not None
    return claim


def test_a_claim_marks_the_row_uploading_for_its_owner(run: Callable[[Scenario], Any]) -> None:
    """Claiming a pending row makes it this owner's, in flight."""

    async def scenario(journal: Journal) -> tuple[Any, ...]:
        claim = await claimed(journal)
        row = await journal.get(claim.record_id)
        return row.state, row.owner, claim.owner

    assert (FileState.UPLOADING, "node-a", "node-a") == run(scenario)


def test_a_row_another_owner_holds_cannot_be_claimed(run: Callable[[Scenario], Any]) -> None:
    """Two daemons never work on one file at once."""

    async def scenario(journal: Journal) -> object:
        claim = await claimed(journal, owner="node-a")
        return await journal.claim(claim.record_id, "node-b", T0)

    assert run(scenario) is None


def test_a_finished_row_cannot_be_claimed(run: Callable[[Scenario], Any]) -> None:
    """A done or failed row is history."""

    async def scenario(journal: Journal) -> list[object]:
        done = await claimed(journal, "done.csv")
        await journal.finish(done, Disposition.ARCHIVED, "/sent/done.csv", T0)
        failed = await claimed(journal, "failed.csv")
        await journal.fail(failed, "400", 400, Disposition.PARKED, "/failed/failed.csv", T0, attempts=1)
        return [
            await journal.claim(done.record_id, "node-a", T0),
            await journal.claim(failed.record_id, "node-a", T0),
        ]

    assert [None, None] == run(scenario)


def test_an_owner_may_claim_its_own_row_again_after_its_bookkeeping_failed(
    run: Callable[[Scenario], Any],
) -> None:
    """A release that could not be written leaves the row uploading; its owner takes it up again."""

    async def scenario(journal: Journal) -> bool:
        claim = await claimed(journal)
        again = await journal.claim(claim.record_id, "node-a", T0 + 1)
        return again is not None and again.fence > claim.fence

    assert run(scenario)


def test_a_delivered_row_is_claimed_to_be_filed_away_without_going_back_in_flight(
    run: Callable[[Scenario], Any],
) -> None:
    """After a restart the archive move of a delivered file is done under a claim, never resent."""

    async def scenario(journal: Journal) -> tuple[Any, ...]:
        claim = await claimed(journal)
        await journal.step_finished(claim, 0, {}, T0, last=True)
        await journal.release_claims("node-a", T0 + 1)
        again = await journal.claim(claim.record_id, "node-a", T0 + 2)
        assert again is not None
        return again.record.state, (await journal.get(claim.record_id)).state

    assert (FileState.DELIVERED, FileState.DELIVERED) == run(scenario)


def test_start_up_releases_only_this_owners_claims(run: Callable[[Scenario], Any]) -> None:
    """Another daemon's files in flight are not taken from it."""

    async def scenario(journal: Journal) -> tuple[Any, ...]:
        mine = await claimed(journal, "mine.csv", "node-a")
        theirs = await claimed(journal, "theirs.csv", "node-b")
        released = await journal.release_claims("node-a", T0 + 5)
        return (
            released,
            (await journal.get(mine.record_id)).state,
            (await journal.get(theirs.record_id)).state,
        )

    assert (1, FileState.PENDING, FileState.UPLOADING) == run(scenario)


def test_a_release_counts_an_attempt_only_for_the_files_own_failure(run: Callable[[Scenario], Any]) -> None:
    """A login wait or an outage is not the file's fault; a 500 for this file is."""

    async def scenario(journal: Journal) -> tuple[int, int, int | None, float | None]:
        claim = await claimed(journal)
        waited = await journal.release(claim, T0 + 1)
        claim = await journal.claim(claim.record_id, "node-a", T0 + 2)
        assert claim is not None
        failed = await journal.release(
            claim, T0 + 3, failed_attempt=True, error="500", status=500, not_before=T0 + 60
        )
        row = await journal.get(claim.record_id)
        return (
            waited.attempts,
            failed.attempts,
            row.last_status and (await journal.get(claim.record_id)).updated_at,
        )

    assert (0, 1, T0 + 3) == run(scenario)


def test_a_release_never_turns_a_delivered_file_back_to_pending(run: Callable[[Scenario], Any]) -> None:
    """Once every step succeeded the file is never sent again, whatever a shutdown does."""

    async def scenario(journal: Journal) -> FileState:
        claim = await claimed(journal)
        await journal.step_finished(claim, 0, {}, T0, last=True)
        await journal.release(claim, T0 + 1)
        return (await journal.get(claim.record_id)).state

    assert FileState.DELIVERED == run(scenario)


def test_the_disposition_says_what_became_of_the_file_and_destination_only_where(
    run: Callable[[Scenario], Any],
) -> None:
    """Archived rows have a path; deleted and kept rows have none; no sentinel strings."""

    async def scenario(journal: Journal) -> list[tuple[Any, ...]]:
        results = []
        for name, disposition, destination in (
            ("archived.csv", Disposition.ARCHIVED, "/sent/archived.csv"),
            ("deleted.csv", Disposition.DELETED, None),
            ("kept.csv", Disposition.KEPT, None),
        ):
            claim = await claimed(journal, name)
            await journal.finish(claim, disposition, destination, T0)
            row = await journal.get(claim.record_id)
            results.append((row.state, row.disposition, row.destination))
        return results

    assert [
        (FileState.DONE, Disposition.ARCHIVED, "/sent/archived.csv"),
        (FileState.DONE, Disposition.DELETED, None),
        (FileState.DONE, Disposition.KEPT, None),
    ] == run(scenario)


def test_a_kept_version_is_settled_but_a_new_inode_with_the_same_size_and_mtime_is_not(
    run: Callable[[Scenario], Any],
) -> None:
    """The inode tells a replacement from the kept file, even with identical size and mtime."""

    async def scenario(journal: Journal) -> tuple[bool, bool, bool]:
        claim = await claimed(journal)
        await journal.finish(claim, Disposition.KEPT, None, T0)
        same = await journal.is_settled("reports", "a.csv", A)
        other_inode = await journal.is_settled("reports", "a.csv", FileIdentity(10, 1, inode=200))
        readmitted = await journal.admit("reports", "a.csv", FileIdentity(10, 1, inode=200), T0 + 1)
        return same, other_inode, readmitted is not None

    assert (True, False, True) == run(scenario)


def test_each_version_of_a_file_gets_its_own_idempotency_key_kept_across_attempts(
    run: Callable[[Scenario], Any],
) -> None:
    """The key is stable while a version is retried and new for a new version or a new file."""

    async def scenario(journal: Journal) -> tuple[bool, bool, bool]:
        claim = await claimed(journal)
        first_key = claim.record.idempotency_key
        released = await journal.release(claim, T0 + 1, failed_attempt=True, error="503", status=503)
        again = await journal.admit("reports", "a.csv", A, T0 + 2)
        rewritten = await journal.admit("reports", "a.csv", FileIdentity(11, 2, inode=100), T0 + 3)
        other = await journal.admit("reports", "b.csv", A, T0 + 4)
        assert again is not None
        assert rewritten is not None
        assert other is not None
        return (
            released.idempotency_key == again.idempotency_key == first_key,
            rewritten.idempotency_key != first_key,
            other.idempotency_key not in (first_key, rewritten.idempotency_key),
        )

    assert (True, True, True) == run(scenario)


def test_records_lists_rows_newest_first_filtered_by_target_and_state(run: Callable[[Scenario], Any]) -> None:
    """What `list` reads."""

    async def scenario(journal: Journal) -> list[str]:
        await journal.admit("reports", "old.csv", A, T0)
        await journal.admit("reports", "new.csv", A, T0 + 1)
        await journal.admit("scans", "elsewhere.csv", A, T0 + 2)
        claim = await claimed(journal, "busy.csv")
        del claim
        rows = await journal.records("reports", [FileState.PENDING])
        return [row.path for row in rows]

    assert ["new.csv", "old.csv"] == run(scenario)


def test_a_schema_2_journal_is_migrated_to_dispositions_identities_and_keys(tmp_path: Path) -> None:
    """Sentinels in destination become dispositions; each row gets a key; rows are kept."""
    path = tmp_path / "journal.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(
        """
        CREATE TABLE files (
            id INTEGER PRIMARY KEY, target TEXT NOT NULL, path TEXT NOT NULL,
            size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0, next_step INTEGER NOT NULL DEFAULT 0,
            step_in_flight INTEGER, outputs TEXT NOT NULL DEFAULT '{}', plan TEXT, last_error TEXT,
            last_status INTEGER, destination TEXT, discovered_at REAL NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE INDEX files_settled ON files (target, path, size, mtime_ns)
            WHERE destination IS NULL AND state IN ('done', 'failed');
        INSERT INTO files (target, path, size, mtime_ns, state, destination, discovered_at, updated_at) VALUES
            ('r', 'archived.csv', 1, 1, 'done', '/sent/archived.csv', 0, 0),
            ('r', 'deleted.csv', 1, 1, 'done', 'deleted', 0, 0),
            ('r', 'kept.csv', 1, 1, 'done', NULL, 0, 0),
            ('r', 'changed.csv', 1, 1, 'done', 'changed', 0, 0),
            ('r', 'parked.csv', 1, 1, 'failed', '/failed/parked.csv', 0, 0),
            ('r', 'stuck.csv', 1, 1, 'failed', NULL, 0, 0),
            ('r', 'gone.csv', 1, 1, 'gone', NULL, 0, 0),
            ('r', 'waiting.csv', 1, 1, 'pending', NULL, 0, 0),
            ('r', 'crashed.csv', 1, 1, 'uploading', NULL, 0, 0);
        PRAGMA user_version=2;
        """
    )
    old.close()

    async def scenario() -> tuple[dict[str, tuple[Any, ...]], int, bool]:
        journal = SqliteJournal.open(path)
        try:
            rows = await journal.records("r")
            released = await journal.release_claims("node-a", T0)
            settled = await journal.is_settled("r", "kept.csv", FileIdentity(1, 1, inode=5))
            return (
                {row.path: (row.disposition, row.destination, bool(row.idempotency_key)) for row in rows},
                released,
                settled,
            )
        finally:
            await journal.close()

    found, released, settled = asyncio.run(scenario())
    assert {
        "archived.csv": (Disposition.ARCHIVED, "/sent/archived.csv", True),
        "deleted.csv": (Disposition.DELETED, None, True),
        "kept.csv": (Disposition.KEPT, None, True),
        "changed.csv": (Disposition.CHANGED, None, True),
        "parked.csv": (Disposition.PARKED, "/failed/parked.csv", True),
        "stuck.csv": (Disposition.LEFT_IN_PLACE, None, True),
        "gone.csv": (Disposition.VANISHED, None, True),
        "waiting.csv": (None, None, True),
        "crashed.csv": (None, None, True),
    } == found
    assert (1, True) == (released, settled)
