"""The folder watcher keeps going after things go wrong, with the real watchdog observer.

An unreadable sub-folder, a drop folder removed and recreated, an offer that raises
(the journal's disk full), a journal look-up that raises: each is logged and the rest
of the folder is still delivered. Waits are on conditions with deadlines, never sleeps.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from watchdog.events import FileClosedEvent, FileSystemEvent
from watchdog.utils import BaseThread

from tests.helpers import wait_until
from tests.integration.test_watcher import TIMEOUT, Offers, run, target
from uploader_daemon.readiness import Snapshot
from uploader_daemon.watcher import FolderWatcher

Logs = list[dict[str, Any]]


@pytest.fixture
def logs() -> Iterator[Logs]:
    with structlog.testing.capture_logs() as captured:
        yield captured


def events(logs: Logs, name: str) -> Logs:
    return [entry for entry in logs if entry["event"] == name]


async def logged(logs: Logs, name: str) -> None:
    """Wait (off the loop, so the watcher keeps running) until ``name`` has been logged."""
    await asyncio.to_thread(wait_until, lambda: events(logs, name), TIMEOUT, name)


def scandir_failing_for(monkeypatch: pytest.MonkeyPatch, path: Path, error: OSError) -> None:
    """``os.scandir`` raises ``error`` for ``path`` (root may read anything; mode 000 is no test)."""
    real_scandir = os.scandir

    def scandir(target: Any = ".") -> Any:
        if isinstance(target, str | os.PathLike) and os.fspath(target) == str(path):
            raise error
        return real_scandir(target)

    monkeypatch.setattr(os, "scandir", scandir)  # process-wide, but only that one path differs


def watchdog_threads() -> set[threading.Thread]:
    """watchdog's observer and emitter threads that are alive."""
    return {
        thread for thread in threading.enumerate() if isinstance(thread, BaseThread) and thread.is_alive()
    }


def test_unreadable_sub_folder_is_warned_about_once_and_the_rest_is_found(
    folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch, logs: Logs
) -> None:
    """One sub-folder that cannot be listed is skipped with one warning; the other files are offered."""
    drop = folders["drop"]
    for sub in ("locked", "open"):
        (drop / sub).mkdir()
        (drop / sub / "inner.csv").write_text("x")
    (drop / "top.csv").write_text("x")
    scandir_failing_for(monkeypatch, drop / "locked", PermissionError(errno.EACCES, "Permission denied"))

    async def scenario(watcher: FolderWatcher, offers: Offers) -> None:
        await offers.until("top.csv")
        await offers.until(os.path.join("open", "inner.csv"))
        await watcher.scan()

    offers = run(target(folders, recursive="true"), scenario)
    assert {"top.csv", os.path.join("open", "inner.csv")} == set(offers.paths)
    assert [] == events(logs, "scan_failed")
    warnings = events(logs, "subfolder_unreadable")
    assert [("locked", "Permission denied")] == [(entry["folder"], entry["error"]) for entry in warnings]


def test_sub_folder_vanishing_during_a_scan_does_not_fail_it(
    folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch, logs: Logs
) -> None:
    """A sub-folder removed between its parent's listing and its own is skipped quietly."""
    drop = folders["drop"]
    (drop / "going").mkdir()
    (drop / "going" / "inner.csv").write_text("x")
    (drop / "top.csv").write_text("x")
    real_scandir = os.scandir

    def scandir(target: Any = ".") -> Any:
        if isinstance(target, str) and target == str(drop / "going"):
            shutil.rmtree(target)  # gone after the drop folder listed it, before its own listing
        return real_scandir(target)

    monkeypatch.setattr(os, "scandir", scandir)  # process-wide, but only that one path differs

    async def scenario(watcher: FolderWatcher, offers: Offers) -> None:
        await offers.until("top.csv")

    assert ["top.csv"] == run(target(folders, recursive="true"), scenario).paths
    assert [] == events(logs, "scan_failed") + events(logs, "subfolder_unreadable")


def test_unreadable_drop_folder_fails_the_scan_without_raising(
    folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch, logs: Logs
) -> None:
    """Only the drop folder itself failing to list fails a scan, which logs it and returns 0."""
    scandir_failing_for(monkeypatch, folders["drop"], PermissionError(errno.EACCES, "Permission denied"))

    async def scenario(watcher: FolderWatcher, offers: Offers) -> None:
        assert 0 == await watcher.scan()

    run(target(folders, recursive="true"), scenario)
    assert 2 == len(events(logs, "scan_failed"))


def test_sub_folder_appearing_unreadable_is_warned_about(
    folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch, logs: Logs
) -> None:
    """A sub-folder created while watching that cannot be listed is logged, not silently ignored."""
    incoming = folders["drop"] / "incoming"
    scandir_failing_for(monkeypatch, incoming, PermissionError(errno.EACCES, "Permission denied"))

    async def scenario(watcher: FolderWatcher, offers: Offers) -> None:
        incoming.mkdir()
        await logged(logs, "subfolder_unreadable")
        (folders["drop"] / "marker.csv").write_text("x")
        await offers.until("marker.csv")

    assert ["marker.csv"] == run(target(folders, recursive="true"), scenario).paths
    assert ["incoming"] == [entry["folder"] for entry in events(logs, "subfolder_unreadable")]


def test_watch_comes_back_after_the_drop_folder_is_removed_and_recreated(
    folders: dict[str, Path], logs: Logs
) -> None:
    """After rm -rf and mkdir of the drop folder, the next scan restarts inotify: events flow again."""
    drop = folders["drop"]
    elsewhere = watchdog_threads()  # other tests' threads, if any
    threads: dict[str, int] = {}

    async def scenario(watcher: FolderWatcher, offers: Offers) -> None:
        assert watcher.events_have_close
        threads["before"] = len(watchdog_threads() - elsewhere)
        shutil.rmtree(drop)
        await logged(logs, "drop_folder_removed")
        drop.mkdir()
        await watcher.scan()
        threads["after"] = len(watchdog_threads() - elsewhere)
        written_at = time.monotonic()
        (drop / "after.csv").write_text("x")  # rescan_every is 1h: only an event can offer it
        await offers.until("after.csv")
        latency = offers.times["after.csv"] - written_at
        assert latency < 0.25, f"picked up after {latency * 1000:.0f} ms"

    assert ["after.csv"] == run(target(folders), scenario).paths
    assert threads["before"] == threads["after"], "the old observer's threads were not ended"
    assert set() == watchdog_threads() - elsewhere
    assert ["the drop folder was removed"] == [entry["reason"] for entry in events(logs, "watch_restarting")]


def test_an_event_whose_handling_fails_is_logged_and_the_rest_are_handled(
    folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch, logs: Logs
) -> None:
    """An offer raising (journal disk full) costs only that file's event, not the batch after it."""
    goods = [f"good-{number}.csv" for number in range(5)]
    closes_posted: list[str] = []

    async def scenario(watcher: FolderWatcher, offers: Offers) -> None:
        post = watcher.post

        def counting_post(event: FileSystemEvent, generation: int) -> None:
            post(event, generation)
            if isinstance(event, FileClosedEvent):
                closes_posted.append(os.fsdecode(event.src_path))

        monkeypatch.setattr(watcher, "post", counting_post)
        for name in ["bad.csv", *goods]:
            (folders["drop"] / name).write_text("x")
        # Hold the loop until every close is queued, so all of them are drained in one
        # batch with bad.csv's first and nothing arriving afterwards to start another.
        wait_until(lambda: len(closes_posted) == 1 + len(goods), TIMEOUT, "the close events")
        for name in goods:
            await offers.until(name)
        (folders["drop"] / "later.csv").write_text("x")
        await offers.until("later.csv")

    offers = run(target(folders), scenario, failing={"bad.csv"})
    assert [*goods, "later.csv"] == offers.paths
    failures = events(logs, "watch_event_failed")
    assert [("bad.csv", "[Errno 28] No space left on device")] == [
        (entry["file"], entry["error"]) for entry in failures
    ]
    assert "exc_info" not in failures[0]


def test_an_offer_failing_after_the_settle_period_is_retried_by_the_next_scan(
    folders: dict[str, Path], logs: Logs
) -> None:
    """An offer raising in a settle timer is logged; the file is offered by the next scan."""

    async def scenario(watcher: FolderWatcher, offers: Offers) -> None:
        (folders["drop"] / "bad.csv").write_text("x")
        await logged(logs, "settle_check_failed")
        await watcher.scan()
        await offers.until("bad.csv")

    assert ["bad.csv"] == run(target(folders, settle="100ms"), scenario, failing={"bad.csv"}).paths
    assert ["bad.csv"] == [entry["file"] for entry in events(logs, "settle_check_failed")]


def test_a_journal_lookup_failing_during_a_scan_does_not_end_it(folders: dict[str, Path], logs: Logs) -> None:
    """scan() never raises: a file whose journal look-up fails is logged, the others are offered."""
    for name in ("bad.csv", "good.csv"):
        (folders["drop"] / name).write_text("x")

    def already_handled(path: str, snapshot: Snapshot) -> bool:
        if path == "bad.csv":
            raise sqlite3.OperationalError("disk I/O error")
        return False

    async def scenario(watcher: FolderWatcher, offers: Offers) -> None:
        assert 0 == await watcher.scan()  # good.csv is already settling from the first scan
        await offers.until("good.csv")

    assert ["good.csv"] == run(target(folders), scenario, already_handled=already_handled).paths
    failures = events(logs, "scan_files_failed")
    assert [(1, "disk I/O error")] * 2 == [(entry["files"], entry["error"]) for entry in failures]


def test_stop_ends_the_observer_threads_while_the_loop_keeps_running(folders: dict[str, Path]) -> None:
    """stop() joins watchdog's threads in a worker thread: the loop runs other callbacks meanwhile."""
    elsewhere = watchdog_threads()

    async def scenario(watcher: FolderWatcher, offers: Offers) -> None:
        ran: list[str] = []

        def callback() -> None:
            ran.append("callback")

        assert watchdog_threads() - elsewhere
        asyncio.get_running_loop().call_soon(callback)
        await watcher.stop()
        assert ["callback"] == ran
        assert set() == watchdog_threads() - elsewhere
        await watcher.stop()  # a second stop (the daemon's _release) is harmless

    run(target(folders), scenario)
