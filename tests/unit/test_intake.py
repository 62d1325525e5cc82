"""The intake: a ready file gets a journal row, then a place in the schedule."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from structlog.testing import capture_logs

from tests.helpers import FakeClock
from tests.unit.pooling import (
    DEADLINE,
    OWNER,
    FlakyJournal,
    drop,
    events_named,
    eventually,
    identity_of,
    target_settings,
)
from uploader_daemon.config.schema import TargetSettings
from uploader_daemon.identity import FileIdentity
from uploader_daemon.journal import Disposition, FileState, SqliteJournal
from uploader_daemon.pool.intake import Intake
from uploader_daemon.pool.schedule import Schedule


class Parts:
    def __init__(self, target: TargetSettings) -> None:
        self.target = target
        self.backend = SqliteJournal.open(":memory:")
        self.journal = FlakyJournal(self.backend)
        self.schedule = Schedule()
        self.clock = FakeClock(1_000_000.0)
        self.intake = Intake(target, self.journal, self.schedule, self.clock)


def run(tmp_path: Path, scenario: Callable[[Parts], Awaitable[None]]) -> None:
    target = target_settings(tmp_path)

    async def main() -> None:
        parts = Parts(target)
        try:
            await asyncio.wait_for(scenario(parts), DEADLINE)
        finally:
            await parts.intake.stop()
            await parts.backend.close()

    asyncio.run(main())


def test_a_ready_file_is_recorded_as_pending_and_queued(tmp_path: Path) -> None:
    """offer() writes the journal row first, then schedules the file under that row's id."""

    async def scenario(parts: Parts) -> None:
        path = drop(parts.target, "a.csv")
        parts.intake.offer("a.csv")
        await eventually(lambda: parts.schedule.is_scheduled("a.csv"))
        (record,) = await parts.backend.records(parts.target.name)
        assert FileState.PENDING == record.state
        assert identity_of(path) == record.identity
        assert record.id == parts.schedule.record_of("a.csv")
        assert ("a.csv", record.id) == await parts.schedule.take()

    run(tmp_path, scenario)


def test_files_are_admitted_in_the_order_they_became_ready(tmp_path: Path) -> None:
    """The journal's row ids, and so the schedule's order, follow the offers."""

    async def scenario(parts: Parts) -> None:
        for name in ("c.csv", "a.csv", "b.csv"):
            drop(parts.target, name)
            parts.intake.offer(name)
        await eventually(lambda: parts.schedule.is_scheduled("b.csv"))
        taken = [(await parts.schedule.take())[0] for _ in range(3)]
        assert ["c.csv", "a.csv", "b.csv"] == taken

    run(tmp_path, scenario)


def test_a_file_the_journal_refuses_is_skipped_by_scans_until_it_changes(tmp_path: Path) -> None:
    """A kept version is refused; known() says so for that version only, never for a new one."""

    async def scenario(parts: Parts) -> None:
        path = drop(parts.target, "kept.csv")
        kept = identity_of(path)
        record = await parts.backend.admit(parts.target.name, "kept.csv", kept, parts.clock.now())
        assert record is not None
        claim = await parts.backend.claim(record.id, OWNER, parts.clock.now())
        assert claim is not None
        await parts.backend.finish(claim, Disposition.KEPT, None, parts.clock.now())

        parts.intake.offer("kept.csv")
        drop(parts.target, "after.csv")
        parts.intake.offer("after.csv")  # admitted after kept.csv had its turn
        await eventually(lambda: parts.schedule.is_scheduled("after.csv"))

        assert not parts.schedule.is_scheduled("kept.csv")
        assert parts.intake.known("kept.csv", kept)
        rewritten = FileIdentity(kept.size + 1, kept.mtime_ns + 1, kept.inode)
        assert not parts.intake.known("kept.csv", rewritten)
        assert not parts.intake.known("other.csv", kept)

        path.write_bytes(b"a new version, longer than the first\n")
        parts.intake.offer("kept.csv")
        await eventually(lambda: parts.schedule.is_scheduled("kept.csv"))
        assert parts.intake.known("kept.csv", identity_of(path))  # scheduled now

    run(tmp_path, scenario)


def test_a_file_waiting_for_admission_is_known(tmp_path: Path) -> None:
    """Between offer() and its admission a scan must not hand the file to readiness again."""

    async def scenario(parts: Parts) -> None:
        path = drop(parts.target, "a.csv")
        parts.intake.offer("a.csv")
        assert parts.intake.known("a.csv", identity_of(path))

    run(tmp_path, scenario)


def test_an_admission_error_is_logged_and_later_admissions_go_on(tmp_path: Path) -> None:
    """A journal that fails (a full disk) costs that one admission, not the intake."""

    async def scenario(parts: Parts) -> None:
        parts.journal.break_for("admit", times=1)
        with capture_logs() as logs:
            parts.intake = Intake(parts.target, parts.journal, parts.schedule, parts.clock)
            for name in ("first.csv", "second.csv"):
                drop(parts.target, name)
                parts.intake.offer(name)
            await eventually(lambda: parts.schedule.is_scheduled("second.csv"))
        assert not parts.schedule.is_scheduled("first.csv")
        (failure,) = events_named(logs, "admission_failed")
        assert "error" == failure["log_level"]
        assert "first.csv" == failure["file"]
        assert "OperationalError" == failure["error_type"]
        assert "the next rescan tries the file again" in failure["hint"]

        parts.intake.offer("first.csv")  # the next rescan
        await eventually(lambda: parts.schedule.is_scheduled("first.csv"))

    run(tmp_path, scenario)


def test_a_file_gone_or_no_longer_regular_before_admission_is_not_recorded(tmp_path: Path) -> None:
    """Nothing to admit: no row, no schedule entry."""

    async def scenario(parts: Parts) -> None:
        parts.intake.offer("vanished.csv")
        os.mkfifo(parts.target.folder / "pipe.csv")
        parts.intake.offer("pipe.csv")
        drop(parts.target, "real.csv")
        parts.intake.offer("real.csv")
        await eventually(lambda: parts.schedule.is_scheduled("real.csv"))
        assert ["real.csv"] == [record.path for record in await parts.backend.records()]

    run(tmp_path, scenario)


def test_an_offer_of_a_scheduled_file_changes_nothing(tmp_path: Path) -> None:
    """A file already in the schedule is not admitted twice."""

    async def scenario(parts: Parts) -> None:
        drop(parts.target, "a.csv")
        parts.intake.offer("a.csv")
        await eventually(lambda: parts.schedule.is_scheduled("a.csv"))
        parts.intake.offer("a.csv")
        drop(parts.target, "b.csv")
        parts.intake.offer("b.csv")
        await eventually(lambda: parts.schedule.is_scheduled("b.csv"))
        assert 2 == len(await parts.backend.records())
        assert (2, 0) == parts.schedule.counts()

    run(tmp_path, scenario)


def test_resume_unfinished_queues_pending_and_delivered_rows_of_this_target(tmp_path: Path) -> None:
    """After a restart the journal's unfinished rows are scheduled, oldest first."""

    async def scenario(parts: Parts) -> None:
        now = parts.clock.now()
        journal = parts.backend
        first = await journal.admit("docs", "first.csv", FileIdentity(1, 1), now)
        delivered = await journal.admit("docs", "delivered.csv", FileIdentity(2, 2), now)
        await journal.admit("other-target", "x.csv", FileIdentity(3, 3), now)
        assert first is not None
        assert delivered is not None
        claim = await journal.claim(delivered.id, OWNER, now)
        assert claim is not None
        await journal.delivered(claim, now)

        with capture_logs() as logs:
            intake = Intake(parts.target, journal, parts.schedule, parts.clock)
            assert 2 == await intake.resume_unfinished()
        assert [("first.csv", first.id), ("delivered.csv", delivered.id)] == [
            await parts.schedule.take(),
            await parts.schedule.take(),
        ]
        (resumed,) = events_named(logs, "unfinished_files_resumed")
        assert 2 == resumed["files"]

    run(tmp_path, scenario)


def test_resume_unfinished_with_nothing_unfinished_says_nothing(tmp_path: Path) -> None:
    """An empty journal: nothing queued, nothing logged."""

    async def scenario(parts: Parts) -> None:
        with capture_logs() as logs:
            intake = Intake(parts.target, parts.backend, parts.schedule, parts.clock)
            assert 0 == await intake.resume_unfinished()
        assert [] == logs
        assert (0, 0) == parts.schedule.counts()

    run(tmp_path, scenario)


def test_stop_drops_what_is_not_admitted_yet_and_refuses_new_offers(tmp_path: Path) -> None:
    """After stop() nothing reaches the journal (the next start's scan finds those files)."""

    async def scenario(parts: Parts) -> None:
        for name in ("a.csv", "b.csv"):
            drop(parts.target, name)
            parts.intake.offer(name)
        await parts.intake.stop()  # before the admitting task ever ran
        parts.intake.offer("a.csv")
        assert not parts.intake.known("a.csv", identity_of(parts.target.folder / "a.csv"))
        assert [] == await parts.backend.records()
        assert (0, 0) == parts.schedule.counts()

    run(tmp_path, scenario)
