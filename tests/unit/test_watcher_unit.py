"""The folder watcher's decisions, driven with watchdog event objects on the loop thread.

The observer is a real one, but a polling observer with a one-hour interval: it never
reports anything during a test, so every event the watcher handles is the one the test
handed it. One test at the end runs the real inotify observer.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from structlog.testing import capture_logs
from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
)

from tests.unit.pooling import DEADLINE, Logs, events_named, eventually, target_settings
from uploader_daemon import readiness
from uploader_daemon.config.schema import TargetSettings
from uploader_daemon.drop_folder import DropFolder, Listing
from uploader_daemon.readiness import Snapshot
from uploader_daemon.watcher import FolderWatcher

QUIET_POLL = "watch: {poll: true, poll_interval: 1h, rescan_every: 1h}"


@pytest.fixture(autouse=True)
def quick_scan_settle(monkeypatch: pytest.MonkeyPatch) -> None:
    """A file without a close event holds still for 20 ms instead of 2 s (the same rule, faster)."""
    monkeypatch.setattr(readiness, "SCAN_SETTLE", 0.02)


class Offers:
    """The intake's side: records offers; a path in ``failing`` raises once."""

    def __init__(self, failing: set[str] | None = None) -> None:
        self.paths: list[str] = []
        self.failing = failing or set()

    def __call__(self, relative_path: str) -> None:
        if relative_path in self.failing:
            self.failing.discard(relative_path)
            raise OSError(errno.ENOSPC, "No space left on device")
        self.paths.append(relative_path)


def nothing_handled(relative_path: str, snapshot: Snapshot) -> bool:
    return False


def quiet_target(tmp_path: Path, *, settle: float = 0.0, recursive: bool = True) -> TargetSettings:
    """A target whose observer reports nothing during a test (it polls once an hour)."""
    target = target_settings(tmp_path, extra=f"{QUIET_POLL}\n    recursive: {str(recursive).lower()}")
    return target.model_copy(update={"settle": settle})


@asynccontextmanager
async def watching(
    target: TargetSettings,
    offers: Offers,
    handled: Callable[[str, Snapshot], bool] = nothing_handled,
    folder: DropFolder | None = None,
    *,
    with_close: bool = True,
) -> AsyncIterator[FolderWatcher]:
    """A started watcher; ``with_close`` says whether events include closes (inotify's)."""
    watcher = FolderWatcher(target, offer=offers, already_handled=handled, folder=folder)
    watcher.start()
    watcher.events_have_close = with_close
    try:
        yield watcher
    finally:
        await watcher.stop()


def run(scenario: Callable[[], Awaitable[None]]) -> Logs:
    async def main() -> None:
        await asyncio.wait_for(scenario(), DEADLINE)

    with capture_logs() as logs:
        asyncio.run(main())
    return logs


def write(target: TargetSettings, name: str, content: bytes = b"x\n") -> str:
    path = target.folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return str(path)


# --- files -----------------------------------------------------------------------------


def test_a_closed_file_is_offered_at_once_with_no_settle_period(tmp_path: Path) -> None:
    """A close vouches for the file: with settle 0 it is offered right away."""
    target = quiet_target(tmp_path)
    offers = Offers()

    async def scenario() -> None:
        async with watching(target, offers) as watcher:
            watcher._event(FileClosedEvent(write(target, "a.csv")))
            assert ["a.csv"] == offers.paths

    run(scenario)


def test_excluded_names_and_events_outside_the_folder_are_ignored(tmp_path: Path) -> None:
    """Hidden, temporary and partial files are never offered; nor is a path elsewhere."""
    target = quiet_target(tmp_path)
    offers = Offers()
    outside = tmp_path / "elsewhere.csv"
    outside.write_text("x")

    async def scenario() -> None:
        async with watching(target, offers) as watcher:
            for name in (".hidden.csv", "upload.tmp", "big.part", "backup~"):
                watcher._event(FileClosedEvent(write(target, name)))
            watcher._event(FileClosedEvent(str(outside)))
            watcher._event(FileClosedEvent(write(target, "wanted.csv")))
            assert ["wanted.csv"] == offers.paths

    run(scenario)


def test_a_symlink_is_never_offered_and_warned_about_once(tmp_path: Path) -> None:
    """Symlinks are not followed out of a drop folder; one warning however many events."""
    target = quiet_target(tmp_path)
    offers = Offers()
    (tmp_path / "secret.txt").write_text("x")
    link = target.folder / "link.csv"
    link.symlink_to(tmp_path / "secret.txt")

    async def scenario() -> None:
        async with watching(target, offers) as watcher:
            watcher._event(FileClosedEvent(str(link)))
            watcher._event(FileModifiedEvent(str(link)))
            assert [] == offers.paths

    logs = run(scenario)
    (warning,) = events_named(logs, "symlink_skipped")
    assert "link.csv" == warning["file"]


def test_a_file_being_written_waits_for_its_close(tmp_path: Path) -> None:
    """Created, then modified: writing; the close is what makes it ready."""
    target = quiet_target(tmp_path)
    offers = Offers()

    async def scenario() -> None:
        async with watching(target, offers) as watcher:
            path = write(target, "a.csv")
            watcher._event(FileCreatedEvent(path))
            watcher._event(FileModifiedEvent(path))
            watcher._event(FileClosedEvent(write(target, "other.csv")))
            assert ["other.csv"] == offers.paths
            watcher._event(FileClosedEvent(path))
            assert ["other.csv", "a.csv"] == offers.paths

    run(scenario)


def test_a_created_event_that_watchdog_made_up_settles_without_a_close(tmp_path: Path) -> None:
    """A synthetic creation (a file inside a folder that appeared) may never get a close."""
    target = quiet_target(tmp_path)
    offers = Offers()

    async def scenario() -> None:
        async with watching(target, offers) as watcher:
            watcher._event(FileCreatedEvent(write(target, "a.csv"), is_synthetic=True))
            await eventually(lambda: offers.paths)
            assert ["a.csv"] == offers.paths

    run(scenario)


@pytest.mark.parametrize("event_type", [FileCreatedEvent, FileModifiedEvent])
def test_without_close_events_a_created_or_modified_file_settles_on_size_and_mtime(
    tmp_path: Path, event_type: type[FileCreatedEvent] | type[FileModifiedEvent]
) -> None:
    """Polling mode: no close will come, so the file is offered once it held still."""
    target = quiet_target(tmp_path)
    offers = Offers()

    async def scenario() -> None:
        async with watching(target, offers, with_close=False) as watcher:
            watcher._event(event_type(write(target, "a.csv")))
            await eventually(lambda: offers.paths)
            assert ["a.csv"] == offers.paths

    run(scenario)


def test_a_file_renamed_in_from_an_excluded_name_is_offered(tmp_path: Path) -> None:
    """A move inside the folder: the old name is forgotten, the new one is ready."""
    target = quiet_target(tmp_path)
    offers = Offers()

    async def scenario() -> None:
        async with watching(target, offers) as watcher:
            partial = write(target, "a.csv.part")
            os.rename(partial, target.folder / "a.csv")
            watcher._event(FileMovedEvent(partial, str(target.folder / "a.csv")))
            assert ["a.csv"] == offers.paths

    run(scenario)


def test_a_settling_file_moved_or_deleted_away_is_never_offered(tmp_path: Path) -> None:
    """Its settle timer is cancelled: a later file's offer proves the earlier ones had their time."""
    target = quiet_target(tmp_path, settle=0.03)
    offers = Offers()

    async def scenario() -> None:
        async with watching(target, offers) as watcher:
            moved = write(target, "moved.csv")
            deleted = write(target, "deleted.csv")
            watcher._event(FileClosedEvent(moved))
            watcher._event(FileClosedEvent(deleted))
            shutil.move(moved, tmp_path / "moved.csv")
            watcher._event(FileMovedEvent(moved, str(tmp_path / "moved.csv")))
            os.unlink(deleted)
            watcher._event(FileDeletedEvent(deleted))
            watcher._event(FileClosedEvent(write(target, "later.csv")))
            await eventually(lambda: offers.paths)
            assert ["later.csv"] == offers.paths

    run(scenario)


# --- folders ---------------------------------------------------------------------------


def test_a_folder_moved_in_has_its_files_offered(tmp_path: Path) -> None:
    """A directory moved in (recursive) is listed; its files settle and are offered."""
    target = quiet_target(tmp_path)
    offers = Offers()
    incoming = tmp_path / "incoming"
    (incoming / "deep").mkdir(parents=True)
    (incoming / "a.csv").write_text("a")
    (incoming / "deep" / "b.csv").write_text("b")

    async def scenario() -> None:
        async with watching(target, offers) as watcher:
            os.rename(incoming, target.folder / "batch")
            watcher._event(DirMovedEvent(str(incoming), str(target.folder / "batch")))
            await eventually(lambda: len(offers.paths) == 2)
            assert ["batch/a.csv", "batch/deep/b.csv"] == sorted(offers.paths)

    run(scenario)


def test_a_folder_created_is_listed_only_when_recursive(tmp_path: Path) -> None:
    """DirCreatedEvent: recursive targets look inside; others ignore sub-folders."""
    offers = {True: Offers(), False: Offers()}

    async def scenario() -> None:
        for recursive in (True, False):
            (tmp_path / str(recursive)).mkdir()
            target = quiet_target(tmp_path / str(recursive), recursive=recursive)
            async with watching(target, offers[recursive]) as watcher:
                write(target, "sub/a.csv")
                watcher._event(DirCreatedEvent(str(target.folder / "sub")))
                watcher._event(FileClosedEvent(write(target, "top.csv")))
                if recursive:
                    await eventually(lambda: "sub/a.csv" in offers[True].paths)

    run(scenario)
    assert ["top.csv", "sub/a.csv"] == offers[True].paths
    assert ["top.csv"] == offers[False].paths


def test_files_settling_in_a_folder_moved_out_or_deleted_are_forgotten(tmp_path: Path) -> None:
    """removed_below: nothing under a folder that left is offered."""
    target = quiet_target(tmp_path, settle=0.03)
    offers = Offers()

    async def scenario() -> None:
        async with watching(target, offers) as watcher:
            watcher._event(FileClosedEvent(write(target, "out/a.csv")))
            watcher._event(FileClosedEvent(write(target, "gone/b.csv")))
            shutil.move(target.folder / "out", tmp_path / "out")
            watcher._event(DirMovedEvent(str(target.folder / "out"), str(tmp_path / "out")))
            shutil.rmtree(target.folder / "gone")
            watcher._event(DirDeletedEvent(str(target.folder / "gone")))
            watcher._event(FileClosedEvent(write(target, "later.csv")))
            await eventually(lambda: offers.paths)
            assert ["later.csv"] == offers.paths

    run(scenario)


def test_an_excluded_folder_moved_in_or_created_is_not_listed(tmp_path: Path) -> None:
    """A hidden folder is excluded by name; nothing inside it is offered."""
    target = quiet_target(tmp_path)
    offers = Offers()

    async def scenario() -> None:
        async with watching(target, offers) as watcher:
            write(target, ".cache/a.csv")
            watcher._event(DirMovedEvent(str(tmp_path / "x"), str(target.folder / ".cache")))
            watcher._event(DirCreatedEvent(str(target.folder / ".cache")))
            assert not watcher._directory_scans
            assert [] == offers.paths

    run(scenario)


class RefusingSubfolders(DropFolder):
    """Listing ``refused`` sub-folders fails with EACCES (root ignores modes); ``broken`` ones raise a bug."""

    def __init__(self, target: TargetSettings, refused: set[str], broken: set[str] | None = None) -> None:
        super().__init__(target)
        self.refused = refused
        self.broken = broken or set()

    def _check(self, directory: str) -> None:
        relative = self.relative(directory)
        if relative in self.refused:
            raise PermissionError(errno.EACCES, "Permission denied", directory)
        if relative in self.broken:
            raise RuntimeError("a bug in listing")

    def list_files(self, directory: str) -> Listing:
        self._check(directory)
        return super().list_files(directory)

    def listings(self, directory: str, batch: int = 1000) -> Iterator[Listing]:
        self._check(directory)
        yield from super().listings(directory, batch)


def test_a_sub_folder_that_cannot_be_listed_is_warned_about_once(tmp_path: Path) -> None:
    """subfolder_unreadable once per folder; once readable again, a new failure warns again."""
    target = quiet_target(tmp_path)
    offers = Offers()
    folder = RefusingSubfolders(target, refused={"locked"})

    async def scenario() -> None:
        async with watching(target, offers, folder=folder) as watcher:
            write(target, "locked/a.csv")
            for _ in range(2):
                watcher._event(DirCreatedEvent(str(target.folder / "locked")))
                await eventually(lambda: not watcher._directory_scans)
            folder.refused = set()
            await watcher.scan()  # readable again: forgiven
            folder.refused = {"locked"}
            watcher._event(DirCreatedEvent(str(target.folder / "locked")))
            await eventually(lambda: not watcher._directory_scans)

    logs = run(scenario)
    warnings = events_named(logs, "subfolder_unreadable")
    assert ["locked", "locked"] == [warning["folder"] for warning in warnings]
    assert "give the daemon's user read and search permission" in warnings[0]["hint"]


def test_a_sub_folder_listing_that_raises_a_bug_is_logged(tmp_path: Path) -> None:
    """subfolder_scan_failed: the task's exception does not go unseen."""
    target = quiet_target(tmp_path)
    folder = RefusingSubfolders(target, refused=set(), broken={"sub"})

    async def scenario() -> None:
        async with watching(target, Offers(), folder=folder) as watcher:
            write(target, "sub/a.csv")
            watcher._event(DirCreatedEvent(str(target.folder / "sub")))
            await eventually(lambda: not watcher._directory_scans)

    logs = run(scenario)
    (failure,) = events_named(logs, "subfolder_scan_failed")
    assert ("sub", "RuntimeError") == (failure["folder"], failure["error_type"])


def test_a_sub_folder_gone_before_its_listing_is_skipped_quietly(tmp_path: Path) -> None:
    """Created and removed again at once: its own event says so; no warning."""
    target = quiet_target(tmp_path)

    async def scenario() -> None:
        async with watching(target, Offers()) as watcher:
            watcher._event(DirCreatedEvent(str(target.folder / "brief")))
            await eventually(lambda: not watcher._directory_scans)

    logs = run(scenario)
    assert [] == events_named(logs, "subfolder_unreadable")


# --- the drop folder itself ------------------------------------------------------------


def test_a_removed_drop_folder_fails_scans_until_it_is_back_then_the_watch_restarts(tmp_path: Path) -> None:
    """drop_folder_removed; scan_failed while missing; watch_restarting and files found after."""
    target = quiet_target(tmp_path)
    found: list[int] = []

    async def scenario() -> None:
        async with watching(target, Offers()) as watcher:
            shutil.rmtree(target.folder)
            watcher._event(DirDeletedEvent(str(target.folder)))
            found.append(await watcher.scan())
            target.folder.mkdir()
            write(target, "a.csv")
            found.append(await watcher.scan())
            found.append(await watcher.scan())  # the new watch is alive: no second restart

    logs = run(scenario)
    assert [0, 1, 0] == found
    assert "recreate it" in events_named(logs, "drop_folder_removed")[0]["hint"]
    assert "check that the drop folder exists" in events_named(logs, "scan_failed")[0]["hint"]
    assert ["the drop folder was removed"] == [
        event["reason"] for event in events_named(logs, "watch_restarting")
    ]


# --- scans -----------------------------------------------------------------------------


def test_a_scan_counts_new_files_and_skips_those_already_handled(tmp_path: Path) -> None:
    """Known files are skipped; files already settling are not new the second time."""
    target = quiet_target(tmp_path)
    offers = Offers()
    for name in ("a.csv", "b.csv", "known.csv", ".hidden"):
        write(target, name)

    def handled(relative_path: str, snapshot: Snapshot) -> bool:
        return relative_path == "known.csv"

    counts: list[int] = []

    async def scenario() -> None:
        async with watching(target, offers, handled) as watcher:
            counts.append(await watcher.scan())
            counts.append(await watcher.scan())
            await eventually(lambda: len(offers.paths) == 2)

    run(scenario)
    assert [2, 0] == counts
    assert ["a.csv", "b.csv"] == sorted(offers.paths)


def test_a_scan_goes_on_when_one_file_cannot_be_looked_up(tmp_path: Path) -> None:
    """already_handled raising (the journal's disk): scan_files_failed, the other files go on."""
    target = quiet_target(tmp_path)
    offers = Offers()
    write(target, "bad.csv")
    write(target, "good.csv")

    def handled(relative_path: str, snapshot: Snapshot) -> bool:
        if relative_path == "bad.csv":
            raise OSError(errno.ENOSPC, "No space left on device")
        return False

    async def scenario() -> None:
        async with watching(target, offers, handled) as watcher:
            assert 1 == await watcher.scan()
            await eventually(lambda: offers.paths)

    logs = run(scenario)
    (failure,) = events_named(logs, "scan_files_failed")
    assert (1, "OSError") == (failure["files"], failure["error_type"])
    assert ["good.csv"] == offers.paths


def test_a_scan_whose_listing_raises_a_bug_logs_it_and_returns_nothing(tmp_path: Path) -> None:
    """scan() never raises: the rescan job keeps its promise."""
    target = quiet_target(tmp_path)
    folder = RefusingSubfolders(target, refused=set(), broken={"."})

    async def scenario() -> None:
        async with watching(target, Offers(), folder=folder) as watcher:
            assert 0 == await watcher.scan()

    logs = run(scenario)
    assert "RuntimeError" == events_named(logs, "scan_failed")[0]["error_type"]


def test_a_scan_after_stop_offers_nothing(tmp_path: Path) -> None:
    """Once stopped, neither scans nor events reach the intake."""
    target = quiet_target(tmp_path)
    offers = Offers()
    path = write(target, "a.csv")

    async def scenario() -> None:
        watcher = FolderWatcher(target, offer=offers, already_handled=nothing_handled)
        await watcher.stop()  # before start: harmless
        watcher.start()
        await watcher.stop()
        await watcher.stop()  # twice: harmless
        assert 0 == await watcher.scan()
        watcher._event(FileClosedEvent(path))

    run(scenario)
    assert [] == offers.paths


# --- resettling and failing offers -----------------------------------------------------


def test_resettle_watches_a_changed_file_settle_again_and_offers_it(tmp_path: Path) -> None:
    """A queued file that changed before its upload is offered once it holds still again."""
    target = quiet_target(tmp_path)
    offers = Offers()

    async def scenario() -> None:
        async with watching(target, offers) as watcher:
            write(target, "a.csv")
            watcher.resettle("a.csv")
            watcher.resettle("gone.csv")  # not there: forgotten after one look
            await eventually(lambda: offers.paths)
            watcher._event(FileClosedEvent(write(target, "later.csv")))
            assert ["a.csv", "later.csv"] == offers.paths

    run(scenario)


def test_an_offer_failing_in_a_settle_timer_is_logged_and_the_next_scan_offers_it(tmp_path: Path) -> None:
    """settle_check_failed; the file is forgotten, so a rescan finds it again."""
    target = quiet_target(tmp_path, settle=0.02)
    offers = Offers(failing={"a.csv"})

    async def scenario() -> None:
        async with watching(target, offers) as watcher:
            watcher._event(FileClosedEvent(write(target, "a.csv")))
            await eventually(lambda: not offers.failing, message="the failed offer")
            await watcher.scan()
            await eventually(lambda: offers.paths)

    logs = run(scenario)
    assert "the next rescan offers the file again" == events_named(logs, "settle_check_failed")[0]["hint"]
    assert ["a.csv"] == offers.paths


def test_an_event_whose_offer_fails_is_logged_and_the_next_events_are_handled(tmp_path: Path) -> None:
    """With the real inotify observer: watch_event_failed, and the watch goes on."""
    target = target_settings(tmp_path, extra="watch: {rescan_every: 1h}")
    offers = Offers(failing={"first.csv"})

    async def scenario() -> None:
        watcher = FolderWatcher(target, offer=offers, already_handled=nothing_handled)
        watcher.start()
        try:
            assert watcher.events_have_close
            write(target, "first.csv")
            write(target, "second.csv")
            await eventually(lambda: offers.paths, message="the second file's offer")
        finally:
            await watcher.stop()

    logs = run(scenario)
    (failure,) = events_named(logs, "watch_event_failed")
    assert ("first.csv", "OSError") == (failure["file"], failure["error_type"])
    assert ["second.csv"] == offers.paths
