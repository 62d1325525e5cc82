"""The file outlives what goes wrong around it: replaced, rewritten, unreadable, a failing disk.

The real daemon runs in-process against the emulator, with the real watchdog observer.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.helpers import DaemonThread, running_daemon, wait_until
from tests.integration.test_flow_t import TARGET, flow_t_config, sha256
from uploader_daemon.emulator import Emulator, ScriptedResponse
from uploader_daemon.journal import SqliteJournal as Journal

TIMEOUT = 15.0


def events_named(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


def upload_in_flight(logs: list[dict[str, Any]], name: str) -> Callable[[], bool]:
    return lambda: any(entry.get("file") == name for entry in events_named(logs, "delivery_started"))


def journal_states(runner: DaemonThread, path: str) -> list[str]:
    assert runner.daemon is not None
    journal = runner.daemon.journal
    rows = runner.call(
        lambda: journal._db.execute(
            "SELECT state FROM files WHERE target=? AND path=? ORDER BY id", (TARGET, path)
        ).fetchall()
    )
    return [row[0] for row in rows]


def test_a_file_replaced_while_its_upload_is_in_flight_is_delivered_in_its_new_version(
    emulator: Emulator, folders: dict[str, Path], tmp_path: Path
) -> None:
    """The old version's archive move never takes the new version: that one is sent too."""
    emulator.script("POST", "/api/envio", ScriptedResponse(200, {"id": "slow"}, delay=1.0))
    report = folders["drop"] / "report.csv"
    with capture_logs() as logs, running_daemon(flow_t_config(emulator, folders)) as runner:
        report.write_bytes(b"version one\n")
        wait_until(upload_in_flight(logs, "report.csv"), TIMEOUT, "the first upload to start")
        staging = tmp_path / "report.csv.new"
        staging.write_bytes(b"version two, longer\n")
        staging.rename(report)
        assert emulator.wait_for(lambda emu: len(emu.received) == 1, TIMEOUT)
        wait_until(lambda: (folders["sent"] / "report.csv").exists(), TIMEOUT, "the archive")
        states = journal_states(runner, "report.csv")

    assert sha256(b"version two, longer\n") == emulator.received[0].sha256
    assert b"version two, longer\n" == (folders["sent"] / "report.csv").read_bytes()
    assert ["done", "done"] == states
    assert 1 == len(events_named(logs, "file_replaced_after_delivery"))


def test_a_file_written_to_during_its_upload_is_sent_again_whole(
    emulator: Emulator, folders: dict[str, Path]
) -> None:
    """Content appended while the upload runs is not lost: the new version goes out afterwards."""
    emulator.script("POST", "/api/envio", ScriptedResponse(200, {"id": "slow"}, delay=1.0))
    export = folders["drop"] / "export.csv"
    with capture_logs() as logs, running_daemon(flow_t_config(emulator, folders)):
        export.write_bytes(b"first\n")
        wait_until(upload_in_flight(logs, "export.csv"), TIMEOUT, "the first upload to start")
        with export.open("ab") as writer:
            writer.write(b"second\n")
        assert emulator.wait_for(lambda emu: len(emu.received) == 1, TIMEOUT)
        wait_until(lambda: (folders["sent"] / "export.csv").exists(), TIMEOUT, "the archive")

    assert sha256(b"first\nsecond\n") == emulator.received[0].sha256
    # Depending on when the append lands: noticed after the send, or as a body longer
    # than its Content-Length, which fails the send and waits for the file to settle.
    noticed = events_named(logs, "file_changed_during_upload") + events_named(
        logs, "file_changed_before_upload"
    )
    assert noticed


def test_an_unreadable_file_waits_without_using_attempts_until_it_can_be_read(
    emulator: Emulator, folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A producer's umask 077 is an admin's fix, logged once; the file goes once it is readable."""
    from uploader_daemon import drop_folder

    locked = folders["drop"] / "private.csv"
    real_open = os.open

    def guarded_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if os.fspath(path) == locked.name and not readable:  # opened relative to the folder
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    readable = False
    monkeypatch.setattr(drop_folder.os, "open", guarded_open)
    with capture_logs() as logs, running_daemon(flow_t_config(emulator, folders)) as runner:
        locked.write_text("secret-ish\n")
        wait_until(lambda: events_named(logs, "file_unreadable"), TIMEOUT, "the unreadable warning")
        assert runner.daemon is not None
        service = runner.daemon.services[0]
        runner.run_coroutine(service.watcher.scan())  # a rescan before the fix: still no attempt
        readable = True
        runner.run_coroutine(service.watcher.scan())
        assert emulator.wait_for(lambda emu: len(emu.received) == 1, TIMEOUT)
        wait_until(lambda: (folders["sent"] / "private.csv").exists(), TIMEOUT, "the archive")

    assert 1 == len(events_named(logs, "file_unreadable"))
    assert [] == events_named(logs, "delivery_failed")


def test_a_journal_that_fails_for_a_while_neither_kills_a_worker_nor_loses_the_file(
    emulator: Emulator, folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk under the journal is survived: the file is delivered once the disk is back."""
    failures = {"left": 3}
    real_step_started = Journal.step_started
    real_retry_later = Journal.release

    def failing(real: Callable[..., Any]) -> Callable[..., Any]:
        def call(self: Journal, *args: Any, **kwargs: Any) -> Any:
            if failures["left"] > 0:
                failures["left"] -= 1
                raise sqlite3.OperationalError("database or disk is full")
            return real(self, *args, **kwargs)

        return call

    monkeypatch.setattr(Journal, "step_started", failing(real_step_started))
    monkeypatch.setattr(Journal, "release", failing(real_retry_later))
    config = flow_t_config(emulator, folders, concurrency=1, backoff="50ms", max_backoff="200ms")
    with capture_logs() as logs, running_daemon(config) as runner:
        (folders["drop"] / "a.csv").write_text("a\n")
        assert emulator.wait_for(lambda emu: len(emu.received) == 1, TIMEOUT)
        (folders["drop"] / "b.csv").write_text("b\n")
        assert emulator.wait_for(lambda emu: len(emu.received) == 2, TIMEOUT)
        assert runner.daemon is not None
        workers_alive = [task for task in runner.daemon.services[0].workers._workers if not task.done()]

    assert 1 == len(workers_alive)
    assert events_named(logs, "worker_error")
    assert [] == events_named(logs, "worker_died")
    assert {"a.csv", "b.csv"} == {received.name for received in emulator.received}


def test_a_drop_folder_the_daemon_cannot_remove_from_leaves_one_archived_copy(
    emulator: Emulator, folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the source cannot be unlinked, the new archive name is taken back each time."""
    from uploader_daemon import file_moves

    blocked = {"on": True}
    real_unlink = Path.unlink

    def unlink(self: Path, missing_ok: bool = False) -> None:
        if blocked["on"] and self.parent == folders["drop"]:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(file_moves.Path, "unlink", unlink)
    config = flow_t_config(emulator, folders, backoff="50ms", max_backoff="100ms")
    with capture_logs() as logs, running_daemon(config):
        (folders["drop"] / "report.csv").write_text("r\n")
        wait_until(lambda: len(events_named(logs, "after_upload_failed")) >= 3, TIMEOUT, "three retries")
        assert [] == sorted(path.name for path in folders["sent"].iterdir())
        blocked["on"] = False
        wait_until(lambda: (folders["sent"] / "report.csv").exists(), TIMEOUT, "the archive")

    assert ["report.csv"] == sorted(path.name for path in folders["sent"].iterdir())
    assert 1 == len(emulator.received)
    assert "write access" in events_named(logs, "after_upload_failed")[0]["hint"]


def test_a_delivery_whose_checkpoint_could_not_be_written_is_not_left_uploading(
    emulator: Emulator, folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server took the file but the journal's disk was full: the file is retried, not stuck."""
    broken = {"step_finished": 1, "release": 1}  # each fails once, in that order

    def failing(name: str) -> Callable[..., Any]:
        real = getattr(Journal, name)

        def call(self: Journal, *args: Any, **kwargs: Any) -> Any:
            if broken[name] > 0:
                broken[name] -= 1
                raise sqlite3.OperationalError("database or disk is full")
            return real(self, *args, **kwargs)

        return call

    monkeypatch.setattr(Journal, "step_finished", failing("step_finished"))
    monkeypatch.setattr(Journal, "release", failing("release"))
    config = flow_t_config(emulator, folders, backoff="50ms", max_backoff="200ms")
    with running_daemon(config) as runner:
        (folders["drop"] / "a.csv").write_text("a\n")
        wait_until(lambda: (folders["sent"] / "a.csv").exists(), TIMEOUT, "the archive")
        states = journal_states(runner, "a.csv")

    assert ["done"] == states


def test_a_worker_cancelled_by_accident_is_replaced(emulator: Emulator, folders: dict[str, Path]) -> None:
    """A stray cancellation does not shrink the pool: the worker is logged and replaced."""
    config = flow_t_config(emulator, folders, concurrency=2)
    with capture_logs() as logs, running_daemon(config) as runner:
        assert runner.daemon is not None
        workers = runner.daemon.services[0].workers
        runner.call(lambda: next(iter(workers._workers)).cancel())
        wait_until(lambda: events_named(logs, "worker_died"), TIMEOUT, "the replacement")
        alive = runner.call(lambda: sum(1 for task in workers._workers if not task.done()))
        (folders["drop"] / "after.csv").write_text("x\n")
        assert emulator.wait_for(lambda emu: len(emu.received) == 1, TIMEOUT)

    assert 2 == alive
