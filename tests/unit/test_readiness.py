"""When a file in the drop folder counts as ready: the ReadinessTracker's rules.

Time is a fake timer wheel, so settle periods pass instantly and deterministically.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

import pytest

from uploader_daemon.readiness import SCAN_SETTLE, ReadinessTracker, Snapshot

SETTLE = 2.0
STALLED = 3600.0  # watch.stalled_writer_after's default
RESCAN = 60.0  # watch.rescan_every's default


class FakeTimers:
    """The part of an event loop the tracker uses (``call_later``, ``time``), with manual time."""

    def __init__(self) -> None:
        self.now = 0.0
        self._pending: list[tuple[float, Callable[..., object], tuple[Any, ...], FakeHandle]] = []

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> FakeHandle:
        handle = FakeHandle()
        self._pending.append((self.now + delay, callback, args, handle))
        return handle

    def advance(self, seconds: float) -> None:
        """Move time forward, running every timer that falls due, in order."""
        target = self.now + seconds
        while True:
            due = sorted((entry for entry in self._pending if entry[0] <= target), key=lambda e: e[0])
            if not due:
                break
            entry = due[0]
            self._pending.remove(entry)
            self.now = entry[0]
            if not entry[3].cancelled:
                entry[1](*entry[2])
        self.now = target

    @property
    def active(self) -> int:
        return sum(1 for entry in self._pending if not entry[3].cancelled)


class FakeHandle:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Folder:
    """File sizes and mtimes the tracker sees through its ``stat`` function."""

    def __init__(self) -> None:
        self.files: dict[str, Snapshot] = {}

    def write(self, path: str, size: int, mtime: int) -> None:
        self.files[path] = (size, mtime)

    def stat(self, path: str) -> Snapshot | None:
        return self.files.get(path)


@pytest.fixture
def timers() -> FakeTimers:
    return FakeTimers()


@pytest.fixture
def folder() -> Folder:
    return Folder()


@pytest.fixture
def offered() -> list[str]:
    return []


def make_tracker(
    timers: FakeTimers,
    folder: Folder,
    offered: list[str],
    settle: float = SETTLE,
    failures: list[tuple[str, Exception]] | None = None,
    offer: Callable[[str], None] | None = None,
) -> ReadinessTracker:
    def failed(path: str, error: Exception) -> None:
        if failures is None:
            raise AssertionError(f"unexpected failure for {path}: {error!r}")
        failures.append((path, error))

    return ReadinessTracker(
        settle,
        offer or offered.append,
        folder.stat,
        cast(asyncio.AbstractEventLoop, timers),
        stalled_writer_after=STALLED,
        failed=failed,
    )


def test_closed_file_is_offered_after_the_settle_period(
    timers: FakeTimers, folder: Folder, offered: list[str]
) -> None:
    """A closed file is ready once its size and mtime held still for `settle`."""
    tracker = make_tracker(timers, folder, offered)
    folder.write("a.csv", 10, 1)
    tracker.written("a.csv")
    tracker.closed("a.csv")
    timers.advance(SETTLE - 0.1)
    assert [] == offered
    timers.advance(0.2)
    assert ["a.csv"] == offered


def test_zero_settle_offers_at_the_moment_of_closing(
    timers: FakeTimers, folder: Folder, offered: list[str]
) -> None:
    """With settle 0 a file is offered when its writer closes it, without a timer."""
    tracker = make_tracker(timers, folder, offered, settle=0)
    folder.write("a.csv", 10, 1)
    tracker.closed("a.csv")
    assert ["a.csv"] == offered
    assert 0 == timers.active


def test_file_still_open_for_writing_is_never_offered(
    timers: FakeTimers, folder: Folder, offered: list[str]
) -> None:
    """A writer pausing far longer than `settle` does not make a half-written file ready."""
    tracker = make_tracker(timers, folder, offered)
    folder.write("big.bin", 100, 1)
    tracker.created("big.bin")
    tracker.written("big.bin")
    timers.advance(3600)
    assert [] == offered
    folder.write("big.bin", 200, 2)
    tracker.closed("big.bin")
    timers.advance(SETTLE)
    assert ["big.bin"] == offered


def test_write_during_settling_waits_for_the_next_close(
    timers: FakeTimers, folder: Folder, offered: list[str]
) -> None:
    """A file reopened for writing while settling goes back to waiting for its close."""
    tracker = make_tracker(timers, folder, offered)
    folder.write("a.csv", 10, 1)
    tracker.closed("a.csv")
    timers.advance(1)
    folder.write("a.csv", 20, 2)
    tracker.written("a.csv")
    timers.advance(10)
    assert [] == offered
    tracker.closed("a.csv")
    timers.advance(SETTLE)
    assert ["a.csv"] == offered


def test_change_seen_at_the_settle_check_restarts_the_period(
    timers: FakeTimers, folder: Folder, offered: list[str]
) -> None:
    """A size or mtime that moved without an event (NFS, mmap) restarts the settle period."""
    tracker = make_tracker(timers, folder, offered)
    folder.write("a.csv", 10, 1)
    tracker.closed("a.csv")
    folder.write("a.csv", 11, 2)
    timers.advance(SETTLE)
    assert [] == offered
    timers.advance(SETTLE)
    assert ["a.csv"] == offered


def test_removed_file_is_forgotten(timers: FakeTimers, folder: Folder, offered: list[str]) -> None:
    """A file deleted or moved away while settling is never offered."""
    tracker = make_tracker(timers, folder, offered)
    folder.write("a.csv", 10, 1)
    tracker.closed("a.csv")
    tracker.removed("a.csv")
    timers.advance(SETTLE * 2)
    assert [] == offered
    assert not tracker.tracked("a.csv")


def test_file_gone_at_the_settle_check_is_dropped(
    timers: FakeTimers, folder: Folder, offered: list[str]
) -> None:
    """A file that vanished without an event is dropped at its settle check."""
    tracker = make_tracker(timers, folder, offered)
    folder.write("a.csv", 10, 1)
    tracker.closed("a.csv")
    del folder.files["a.csv"]
    timers.advance(SETTLE)
    assert [] == offered
    assert not tracker.tracked("a.csv")


def test_simulated_creation_does_not_reset_a_settling_file(
    timers: FakeTimers, folder: Folder, offered: list[str]
) -> None:
    """watchdog's simulated creation events for a new directory's files do not block them."""
    tracker = make_tracker(timers, folder, offered)
    folder.write("sub/a.csv", 10, 1)
    tracker.scanned("sub/a.csv", (10, 1))
    tracker.created("sub/a.csv")
    timers.advance(SETTLE)
    assert ["sub/a.csv"] == offered


def test_scan_of_an_unknown_file_settles_it(timers: FakeTimers, folder: Folder, offered: list[str]) -> None:
    """A file found by a scan (present at start-up) is offered once it held still."""
    tracker = make_tracker(timers, folder, offered)
    folder.write("old.csv", 10, 1)
    tracker.scanned("old.csv", (10, 1))
    timers.advance(SETTLE)
    assert ["old.csv"] == offered


def rescan_until(
    timers: FakeTimers, tracker: ReadinessTracker, folder: Folder, path: str, until: float
) -> None:
    """Rescan every RESCAN seconds, as the scheduler does, until ``until`` on the fake clock."""
    while timers.now + RESCAN <= until:
        timers.advance(RESCAN)
        snapshot = folder.stat(path)
        assert snapshot is not None
        tracker.scanned(path, snapshot)


def test_missed_close_is_recovered_once_the_file_was_unchanged_for_stalled_writer_after(
    timers: FakeTimers, folder: Folder, offered: list[str]
) -> None:
    """A file stuck "open" and unchanged for `stalled_writer_after` is settled by a rescan."""
    tracker = make_tracker(timers, folder, offered)
    folder.write("a.csv", 10, 1)
    tracker.written("a.csv")
    tracker.scanned("a.csv", (10, 1))
    rescan_until(timers, tracker, folder, "a.csv", STALLED - RESCAN)
    timers.advance(SETTLE)
    assert [] == offered
    rescan_until(timers, tracker, folder, "a.csv", STALLED + RESCAN)
    timers.advance(SETTLE)
    assert ["a.csv"] == offered


def test_writer_pausing_between_two_rescans_is_not_cut_off(
    timers: FakeTimers, folder: Folder, offered: list[str]
) -> None:
    """Two identical rescans a minute apart do not end a writer's 90 s pause mid-file."""
    tracker = make_tracker(timers, folder, offered)
    folder.write("big.bin", 100, 1)
    tracker.created("big.bin")
    tracker.written("big.bin")
    tracker.scanned("big.bin", (100, 1))
    timers.advance(RESCAN)
    tracker.scanned("big.bin", (100, 1))
    timers.advance(30 + SETTLE)
    assert [] == offered
    folder.write("big.bin", 200, 2)
    tracker.written("big.bin")
    tracker.closed("big.bin")
    timers.advance(SETTLE)
    assert ["big.bin"] == offered


def test_a_write_event_restarts_the_stalled_writer_clock(
    timers: FakeTimers, folder: Folder, offered: list[str]
) -> None:
    """A write seen by inotify, even one the scans cannot tell apart, keeps the file waiting."""
    tracker = make_tracker(timers, folder, offered)
    folder.write("slow.bin", 100, 1)
    tracker.written("slow.bin")
    tracker.scanned("slow.bin", (100, 1))
    rescan_until(timers, tracker, folder, "slow.bin", STALLED / 2)
    tracker.written("slow.bin")  # same size and mtime (coarse mtime), but a write all the same
    rescan_until(timers, tracker, folder, "slow.bin", STALLED + RESCAN)
    timers.advance(SETTLE)
    assert [] == offered
    rescan_until(timers, tracker, folder, "slow.bin", STALLED * 1.5 + RESCAN)
    timers.advance(SETTLE)
    assert ["slow.bin"] == offered


def test_a_failing_offer_in_a_settle_timer_is_reported_and_the_file_forgotten(
    timers: FakeTimers, folder: Folder, offered: list[str]
) -> None:
    """An offer raising in a settle timer goes to `failed`, not the loop; a scan finds the file again."""
    failures: list[tuple[str, Exception]] = []

    def full_disk(path: str) -> None:
        raise OSError(28, "No space left on device")

    tracker = make_tracker(timers, folder, offered, failures=failures, offer=full_disk)
    folder.write("a.csv", 10, 1)
    tracker.closed("a.csv")
    timers.advance(SETTLE)
    assert [("a.csv", "[Errno 28] No space left on device")] == [
        (path, str(error)) for path, error in failures
    ]
    assert not tracker.tracked("a.csv")


def test_open_file_still_growing_between_scans_keeps_waiting(
    timers: FakeTimers, folder: Folder, offered: list[str]
) -> None:
    """Scans that see a file grow leave it waiting for its writer."""
    tracker = make_tracker(timers, folder, offered)
    folder.write("a.csv", 10, 1)
    tracker.written("a.csv")
    tracker.scanned("a.csv", (10, 1))
    folder.write("a.csv", 20, 2)
    tracker.scanned("a.csv", (20, 2))
    timers.advance(SETTLE * 10)
    assert [] == offered


def test_directory_removal_forgets_everything_below_it(
    timers: FakeTimers, folder: Folder, offered: list[str]
) -> None:
    """Removing or renaming a sub-folder forgets the files that were settling in it."""
    tracker = make_tracker(timers, folder, offered)
    for name in ("sub/a.csv", "sub/deeper/b.csv", "subway.csv"):
        folder.write(name, 1, 1)
        tracker.closed(name)
    tracker.removed_below("sub")
    timers.advance(SETTLE)
    assert ["subway.csv"] == offered


def test_a_scanned_file_holds_still_for_the_scan_minimum_even_with_zero_settle(
    timers: FakeTimers, folder: Folder, offered: list[str]
) -> None:
    """A file found by a scan may have been open before the watch began: it waits SCAN_SETTLE."""
    tracker = make_tracker(timers, folder, offered, settle=0)
    folder.write("found.csv", 10, 1)
    tracker.scanned("found.csv", (10, 1))
    assert [] == offered
    timers.advance(SCAN_SETTLE)
    assert ["found.csv"] == offered


def test_a_writer_still_at_work_on_a_scanned_file_parks_it_until_closed(
    timers: FakeTimers, folder: Folder, offered: list[str]
) -> None:
    """A write seen during the scan minimum means a writer has it open: wait for its close."""
    tracker = make_tracker(timers, folder, offered, settle=0)
    folder.write("export.csv", 1000, 1)
    tracker.scanned("export.csv", (1000, 1))
    timers.advance(SCAN_SETTLE / 2)
    folder.write("export.csv", 2000, 2)
    tracker.written("export.csv")
    timers.advance(SCAN_SETTLE * 10)
    assert [] == offered
    tracker.closed("export.csv")
    assert ["export.csv"] == offered


def test_a_file_seen_without_a_close_event_settles_for_the_scan_minimum(
    timers: FakeTimers, folder: Folder, offered: list[str]
) -> None:
    """Polling and appearing directories give no close event: the scan minimum applies."""
    tracker = make_tracker(timers, folder, offered, settle=0)
    folder.write("polled.csv", 5, 1)
    tracker.appeared("polled.csv")
    timers.advance(SCAN_SETTLE - 0.1)
    folder.write("polled.csv", 6, 2)  # still growing, no event (NFS)
    timers.advance(0.2)
    assert [] == offered
    timers.advance(SCAN_SETTLE)
    assert ["polled.csv"] == offered


def wall_tracker(timers: FakeTimers, offered: list[str], wall: float) -> ReadinessTracker:
    """A tracker that knows the wall time (the watcher's), on real file identities."""
    from uploader_daemon.identity import FileIdentity

    files = {
        "old.csv": FileIdentity(10, int((wall - 60) * 1e9), 1),
        "fresh.csv": FileIdentity(10, int((wall - 0.5) * 1e9), 2),
    }

    def failed(path: str, error: Exception) -> None:
        raise AssertionError(f"unexpected failure for {path}: {error!r}")

    tracker = ReadinessTracker(
        SETTLE,
        offered.append,
        files.get,
        cast(asyncio.AbstractEventLoop, timers),
        stalled_writer_after=STALLED,
        failed=failed,
        wall=lambda: wall,
    )
    for path, identity in files.items():
        tracker.scanned(path, identity)
    return tracker


def test_a_scanned_file_whose_mtime_is_older_than_the_settle_period_is_ready_at_once(
    timers: FakeTimers, offered: list[str]
) -> None:
    """A backlog found at start: unchanged for a minute already, so it goes without a wait."""
    wall_tracker(timers, offered, wall=1_800_000_000.0)
    assert ["old.csv"] == offered  # fresh.csv changed half a second ago: it holds still first
    timers.advance(SETTLE + 0.1)
    assert ["old.csv", "fresh.csv"] == offered


def test_a_closed_file_waits_its_settle_period_whatever_its_mtime(
    timers: FakeTimers, offered: list[str]
) -> None:
    """The shortcut is for files no event vouches for; a close event keeps the settle rule."""
    from uploader_daemon.identity import FileIdentity

    old = FileIdentity(10, int((1_800_000_000.0 - 60) * 1e9), 1)

    def failed(path: str, error: Exception) -> None:
        raise AssertionError(error)

    tracker = ReadinessTracker(
        SETTLE,
        offered.append,
        lambda path: old,
        cast(asyncio.AbstractEventLoop, timers),
        stalled_writer_after=STALLED,
        failed=failed,
        wall=lambda: 1_800_000_000.0,
    )
    tracker.written("moved-in.csv")
    tracker.closed("moved-in.csv")
    assert [] == offered
    timers.advance(SETTLE + 0.1)
    assert ["moved-in.csv"] == offered
