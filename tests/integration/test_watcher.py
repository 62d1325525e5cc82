"""The folder watcher with the real watchdog observer on real folders.

Absence is proven without sleeping: events arrive in order, so once a file written
*after* the one under test has been offered, the one under test had its chance.
"""

from __future__ import annotations

import asyncio
import errno
import os
import time
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path

import pytest
import structlog
import yaml

from tests.helpers import ConfigYaml, mapping_of
from uploader_daemon.config import TargetSettings
from uploader_daemon.readiness import Snapshot
from uploader_daemon.watcher import FolderWatcher

TIMEOUT = 10.0


def target(folders: dict[str, Path], **overrides: str) -> TargetSettings:
    """Target ``t`` on the test's folders; ``overrides`` are YAML values (``recursive="true"``)."""
    settings = {"settle": "0s", "recursive": "false", "poll": "false", "extra": ""} | overrides
    config = ConfigYaml(
        folders,
        "t",
        "http://127.0.0.1:9",
        settle=settings["settle"],
        watch={"poll": yaml.safe_load(settings["poll"]), "poll_interval": "100ms", "rescan_every": "1h"},
        after_upload={"action": "archive", "archive_dir": folders["drop"] / ".sent"},
        extra={"recursive": yaml.safe_load(settings["recursive"]), **mapping_of(settings["extra"])},
    ).load()
    return config.targets[0]


class Offers:
    """Records offers and lets the test await a particular one.

    An offer of a path in ``failing`` raises once (as a full journal disk would) and is
    not recorded; the next offer of that path succeeds.
    """

    def __init__(self, failing: Collection[str] = ()) -> None:
        self.paths: list[str] = []
        self.times: dict[str, float] = {}
        self.failing = set(failing)
        self._changed = asyncio.Event()

    def __call__(self, path: str) -> None:
        if path in self.failing:
            self.failing.discard(path)
            raise OSError(errno.ENOSPC, "No space left on device")
        self.paths.append(path)
        self.times[path] = time.monotonic()
        self._changed.set()

    async def until(self, path: str) -> None:
        async def wait() -> None:
            while path not in self.paths:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(wait(), TIMEOUT)


def never_handled(path: str, snapshot: Snapshot) -> bool:
    return False


def run(
    settings: TargetSettings,
    scenario: Callable[[FolderWatcher, Offers], Awaitable[None]],
    failing: Collection[str] = (),
    already_handled: Callable[[str, Snapshot], bool] = never_handled,
) -> Offers:
    """Start a watcher, scan once, run ``scenario``, stop; returns what was offered."""

    async def main() -> Offers:
        offers = Offers(failing)
        watcher = FolderWatcher(settings, offer=offers, already_handled=already_handled)
        watcher.start()
        try:
            await watcher.scan()
            await scenario(watcher, offers)
        finally:
            await watcher.stop()
        return offers

    return asyncio.run(main())


def test_closed_file_is_picked_up_within_milliseconds(folders: dict[str, Path]) -> None:
    """With settle 0 a file is offered right after its writer closes it."""

    async def scenario(watcher: FolderWatcher, offers: Offers) -> None:
        closed_at = time.monotonic()
        (folders["drop"] / "report.csv").write_text("a,b\n")
        await offers.until("report.csv")
        latency = offers.times["report.csv"] - closed_at
        assert latency < 0.25, f"picked up after {latency * 1000:.0f} ms"

    assert ["report.csv"] == run(target(folders), scenario).paths


def test_half_written_file_waits_for_its_writer(folders: dict[str, Path]) -> None:
    """A file still open for writing is not offered while its writer pauses."""

    async def scenario(watcher: FolderWatcher, offers: Offers) -> None:
        with (folders["drop"] / "big.bin").open("wb") as writer:
            writer.write(b"first half")
            writer.flush()
            (folders["drop"] / "marker.txt").write_text("later")
            await offers.until("marker.txt")
            assert "big.bin" not in offers.paths
            writer.write(b"second half")
        await offers.until("big.bin")

    assert ["marker.txt", "big.bin"] == run(target(folders, settle="100ms"), scenario).paths


def test_file_renamed_in_from_an_excluded_name_is_offered(folders: dict[str, Path]) -> None:
    """Write as `x.part`, rename to `x.csv`: only the final name is offered."""

    async def scenario(watcher: FolderWatcher, offers: Offers) -> None:
        staging = folders["drop"] / "x.csv.part"
        staging.write_text("data")
        staging.rename(folders["drop"] / "x.csv")
        await offers.until("x.csv")

    assert ["x.csv"] == run(target(folders), scenario).paths


def test_file_moved_in_from_another_folder_is_offered(folders: dict[str, Path], tmp_path: Path) -> None:
    """`mv /elsewhere/file drop/` arrives whole and is offered."""
    outside = tmp_path / "outside.csv"
    outside.write_text("data")

    async def scenario(watcher: FolderWatcher, offers: Offers) -> None:
        outside.rename(folders["drop"] / "moved.csv")
        await offers.until("moved.csv")

    assert ["moved.csv"] == run(target(folders), scenario).paths


def test_excluded_and_not_included_names_are_ignored(folders: dict[str, Path]) -> None:
    """Hidden, temporary and backup names, and names outside `include`, are never offered."""

    async def scenario(watcher: FolderWatcher, offers: Offers) -> None:
        for name in (".hidden", "a.tmp", "b.part", "c.csv~", "notes.txt"):
            (folders["drop"] / name).write_text("x")
        (folders["drop"] / "wanted.csv").write_text("x")
        await offers.until("wanted.csv")

    settings = target(folders, extra='include: ["*.csv"]')
    assert ["wanted.csv"] == run(settings, scenario).paths


def test_symlink_is_skipped_with_a_warning(folders: dict[str, Path], tmp_path: Path) -> None:
    """A symlink in the drop folder is never followed: the drop folder must not leak other files."""
    secret = tmp_path / "secret.txt"
    secret.write_text("not for upload")

    async def scenario(watcher: FolderWatcher, offers: Offers) -> None:
        (folders["drop"] / "link.txt").symlink_to(secret)
        await watcher.scan()
        (folders["drop"] / "marker.txt").write_text("x")
        await offers.until("marker.txt")

    with structlog.testing.capture_logs() as logs:
        offers = run(target(folders), scenario)
    assert ["marker.txt"] == offers.paths
    assert any(entry["event"] == "symlink_skipped" and entry["file"] == "link.txt" for entry in logs)


def test_files_present_at_start_are_found_by_the_first_scan(folders: dict[str, Path]) -> None:
    """Files dropped while the daemon was down are offered after start-up."""
    for name in ("one.csv", "two.csv"):
        (folders["drop"] / name).write_text("x")

    async def scenario(watcher: FolderWatcher, offers: Offers) -> None:
        await offers.until("one.csv")
        await offers.until("two.csv")

    assert {"one.csv", "two.csv"} == set(run(target(folders), scenario).paths)


def test_sub_folders_are_watched_only_when_recursive(folders: dict[str, Path]) -> None:
    """Without `recursive` a sub-folder's files are ignored; with it they are offered."""
    sub = folders["drop"] / "sub"
    sub.mkdir()

    async def flat(watcher: FolderWatcher, offers: Offers) -> None:
        (sub / "inner.csv").write_text("x")
        (folders["drop"] / "top.csv").write_text("x")
        await offers.until("top.csv")

    assert ["top.csv"] == run(target(folders), flat).paths

    async def deep(watcher: FolderWatcher, offers: Offers) -> None:
        (sub / "inner2.csv").write_text("x")
        await offers.until(os.path.join("sub", "inner2.csv"))

    offered = run(target(folders, recursive="true"), deep).paths
    assert os.path.join("sub", "inner2.csv") in offered


def test_directory_moved_in_delivers_its_files(folders: dict[str, Path], tmp_path: Path) -> None:
    """A whole folder moved into a recursive drop folder has every file offered."""
    batch = tmp_path / "batch"
    batch.mkdir()
    for name in ("a.csv", "b.csv"):
        (batch / name).write_text("x")

    async def scenario(watcher: FolderWatcher, offers: Offers) -> None:
        batch.rename(folders["drop"] / "batch")
        await offers.until(os.path.join("batch", "a.csv"))
        await offers.until(os.path.join("batch", "b.csv"))

    run(target(folders, recursive="true"), scenario)


def test_own_archive_folder_inside_the_drop_folder_is_not_watched(folders: dict[str, Path]) -> None:
    """Files the daemon archived into a folder below the drop folder are not sent again."""

    async def scenario(watcher: FolderWatcher, offers: Offers) -> None:
        archive = folders["drop"] / ".sent"
        archive.mkdir()
        (archive / "done.csv").write_text("x")
        (folders["drop"] / "marker.csv").write_text("x")
        await offers.until("marker.csv")

    assert ["marker.csv"] == run(target(folders, recursive="true"), scenario).paths


@pytest.mark.parametrize("settle", ["0s", "200ms"])
def test_polling_mode_finds_files_without_inotify(folders: dict[str, Path], settle: str) -> None:
    """`watch.poll` (NFS/SMB) offers new files by comparing directory snapshots."""

    async def scenario(watcher: FolderWatcher, offers: Offers) -> None:
        assert not watcher.events_have_close
        (folders["drop"] / "polled.csv").write_text("x")
        await offers.until("polled.csv")

    assert ["polled.csv"] == run(target(folders, poll="true", settle=settle), scenario).paths
