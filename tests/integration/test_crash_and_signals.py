"""`kill -9` and SIGTERM against `python -m uploader_daemon run` as a real process.

A slow server is a scripted answer with a delay: the upload it holds is in flight for
as long as the test needs. Scripted answers are 503s, so one a first run left unused
only costs the next run a retry, never a file the emulator did not store.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PASSWORD
from tests.helpers import ENVIO_UPLOAD, ConfigYaml, DaemonProcess, Retry, token_auth, wait_until
from uploader_daemon.emulator import Emulator, EmulatorSettings, ScriptedResponse
from uploader_daemon.journal import SqliteJournal, TargetCounts

TIMEOUT = 20.0
TARGET = "reports"
CONCURRENCY = 4


def process_config(
    path: Path,
    emulator: Emulator,
    folders: dict[str, Path],
    *,
    grace: str,
    level: str = "info",
    before_expiry: str = "5m",
) -> Path:
    return ConfigYaml(
        folders,
        TARGET,
        emulator.base_url,
        log={"level": level, "format": "json"},
        shutdown_grace=grace,
        concurrency=CONCURRENCY,
        retry=Retry(10, "100ms", "500ms"),
        api_timeout="30s",
        auth=token_auth(
            refresh={"path": "/auth/tokenRefresh", "check_every": "1h", "before_expiry": before_expiry}
        ),
        upload=ENVIO_UPLOAD,
    ).write(path)


class Processes:
    """Starts daemon processes for a test and makes sure none outlives it."""

    def __init__(self, config_path: Path, logs_dir: Path) -> None:
        self.config_path = config_path
        self._logs_dir = logs_dir
        self._started: list[DaemonProcess] = []

    def start(self) -> DaemonProcess:
        log_path = self._logs_dir / f"daemon-{len(self._started) + 1}.log"
        process = DaemonProcess(self.config_path, log_path, {"UPLOADER_PASSWORD": PASSWORD})
        self._started.append(process)
        return process

    def close(self) -> None:
        for process in self._started:
            process.close()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    started = Processes(tmp_path / "config.yaml", tmp_path)
    try:
        yield started
    finally:
        started.close()


def journal_counts(folders: dict[str, Path]) -> TargetCounts:
    """Read the journal the way `status` does (safe while a daemon writes to it)."""

    async def read() -> TargetCounts:
        journal = SqliteJournal.open(folders["state"] / "journal.sqlite3")
        try:
            return await journal.counts(TARGET)
        finally:
            await journal.close()

    return asyncio.run(read())


def events(output: str, name: str) -> list[dict[str, Any]]:
    found = []
    for line in output.splitlines():
        entry = json.loads(line)
        if entry["event"] == name:
            found.append(entry)
    return found


def stop(process: DaemonProcess) -> int:
    process.signal(signal.SIGTERM)
    return process.wait(TIMEOUT)


def test_kill_9_mid_way_then_restart_delivers_every_file_with_duplicates_only_from_in_flight(
    emulator: Emulator, folders: dict[str, Path], processes: Processes
) -> None:
    """SIGKILL with uploads in flight, restart on the same state_dir: all 60 delivered, no new login."""
    names = [f"part-{number:02}.csv" for number in range(60)]
    for name in names:
        (folders["drop"] / name).write_bytes(name.encode() * 2000)
    process_config(processes.config_path, emulator, folders, grace="2s")

    first = processes.start()
    assert emulator.wait_for(lambda emu: len(emu.received) >= 15, TIMEOUT)
    # The server turns slow: the next uploads hang for a second, then answer 503.
    emulator.script("POST", "/api/envio", *[ScriptedResponse(503, "slow", delay=1.0)] * CONCURRENCY)
    wait_until(lambda: journal_counts(folders).uploading >= 1, TIMEOUT, "an upload in flight")
    first.kill()
    received_at_kill = len(emulator.received)
    assert 15 <= received_at_kill < len(names)

    second = processes.start()
    wait_until(lambda: len(list(folders["sent"].iterdir())) == len(names), 30, "every file archived")
    assert 0 == stop(second)

    restarted = events(second.output, "daemon_starting")
    assert 1 == len(restarted)
    interrupted = restarted[0]["interrupted_deliveries"]
    duplicates = sum(count - 1 for count in Counter(r.name for r in emulator.received).values())
    assert duplicates <= interrupted <= CONCURRENCY
    assert sorted(names) == sorted({received.name for received in emulator.received})
    assert sorted(names) == sorted(path.name for path in folders["sent"].iterdir())
    assert [] == list(folders["drop"].iterdir())
    assert TargetCounts(done=len(names), last_error=None, last_error_at=None) == journal_counts(folders)
    assert 1 == emulator.counters["logins"]
    assert 1 == len(events(second.output, "token_restored"))
    assert 0 == emulator.counters["expired_token_uses"]


def test_sigterm_exits_0_within_the_grace_period_and_the_cut_off_file_is_delivered_after_restart(
    emulator: Emulator, folders: dict[str, Path], processes: Processes
) -> None:
    """SIGTERM mid-upload: exit 0 after the 0.5 s grace, the file pending, then delivered after restart."""
    process_config(processes.config_path, emulator, folders, grace="500ms", level="debug")
    emulator.script("POST", "/api/envio", ScriptedResponse(503, "slow", delay=4.0))

    first = processes.start()
    first.wait_for_log('"daemon_started"')
    (folders["drop"] / "slow.csv").write_text("id\n1\n")
    first.wait_for_log('"delivery_started"')
    signalled = time.monotonic()
    assert 0 == stop(first)
    assert time.monotonic() - signalled < 2.5, "the 4 s upload was not cut off after the 0.5 s grace"

    abandoned = events(first.output, "upload_abandoned")
    assert ["slow.csv"] == [entry["file"] for entry in abandoned]
    assert 1 == len(events(first.output, "daemon_stopped"))
    assert TargetCounts(pending=1) == journal_counts(folders)
    assert ["slow.csv"] == [path.name for path in folders["drop"].iterdir()]

    second = processes.start()
    assert emulator.wait_for(lambda emu: len(emu.received) == 1, TIMEOUT)
    wait_until(lambda: (folders["sent"] / "slow.csv").exists(), TIMEOUT, "slow.csv archived")
    assert 0 == stop(second)
    assert ["slow.csv"] == [received.name for received in emulator.received]
    assert 1 == journal_counts(folders).done


def test_second_sigterm_during_the_grace_period_cuts_uploads_off_and_exits_143(
    emulator: Emulator, folders: dict[str, Path], processes: Processes
) -> None:
    """A second SIGTERM while waiting for a slow upload exits 128+15 at once; the file stays pending."""
    process_config(processes.config_path, emulator, folders, grace="10s", level="debug")
    emulator.script("POST", "/api/envio", ScriptedResponse(503, "slow", delay=8.0))

    daemon = processes.start()
    daemon.wait_for_log('"daemon_started"')
    (folders["drop"] / "slow.csv").write_text("id\n1\n")
    daemon.wait_for_log('"delivery_started"')
    daemon.signal(signal.SIGTERM)
    daemon.wait_for_log('"waiting_for_uploads"')
    signalled = time.monotonic()
    daemon.signal(signal.SIGTERM)

    assert 128 + signal.SIGTERM == daemon.wait(TIMEOUT)
    assert time.monotonic() - signalled < 3.0
    assert 1 == len(events(daemon.output, "forced_stop"))
    assert TargetCounts(pending=1) == journal_counts(folders)
    assert ["slow.csv"] == [path.name for path in folders["drop"].iterdir()]


def test_sigterm_during_a_token_refresh_lets_it_finish_within_the_grace_period(
    tmp_path: Path, folders: dict[str, Path], processes: Processes
) -> None:
    """A refresh under way when SIGTERM comes completes (no error, no traceback) and the exit is 0."""
    settings = EmulatorSettings(
        storage_dir=tmp_path / "server", users={"uploader": PASSWORD}, token_lifetime=3.0
    )
    with Emulator(settings) as emulator:
        # The token is due 0.5 s after login; its refresh takes a second to answer.
        process_config(
            processes.config_path, emulator, folders, grace="3s", level="debug", before_expiry="2500ms"
        )
        emulator.script(
            "GET",
            "/auth/tokenRefresh",
            ScriptedResponse(
                200, {"access_token": "refreshed-token-0123456789", "expires_in": 60}, delay=1.0
            ),
        )
        daemon = processes.start()
        daemon.wait_for_log('"daemon_started"')
        (folders["drop"] / "a.csv").write_text("a")
        assert emulator.wait_for(lambda emu: len(emu.received) == 1, TIMEOUT)
        daemon.wait_for_log("(trigger: date[")  # APScheduler runs the one-off token check
        signalled = time.monotonic()

        assert 0 == stop(daemon)

    assert time.monotonic() - signalled < 3.0
    assert 1 == len(events(daemon.output, "token_refreshed"))
    errors = [json.loads(line) for line in daemon.output.splitlines() if json.loads(line)["level"] == "error"]
    assert [] == errors
