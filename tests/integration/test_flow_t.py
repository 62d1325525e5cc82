"""Flow T end to end: the real daemon, the real emulator, real folders, the real watchdog observer.

Absence is proven without sleeping: events arrive in order, so once a file written
after the one under test has been received, the one under test had its chance. Token
timing uses a fake clock shared by the daemon and the emulator, moved by the test.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from tests.conftest import PASSWORD
from tests.helpers import (
    ENVIO_UPLOAD,
    ConfigYaml,
    DaemonThread,
    FakeClock,
    Retry,
    running_daemon,
    token_auth,
    wait_until,
)
from uploader_daemon.auth import ManagedTokenCredential
from uploader_daemon.config import Config
from uploader_daemon.emulator import Emulator, EmulatorSettings, ScriptedResponse
from uploader_daemon.journal import TargetCounts

TIMEOUT = 20.0
TARGET = "reports"
ENVIRON = {"UPLOADER_PASSWORD": PASSWORD}


def flow_t_config(
    emulator: Emulator,
    folders: dict[str, Path],
    *,
    concurrency: int = 4,
    attempts: int = 5,
    backoff: str = "100ms",
    max_backoff: str = "1s",
    check_every: str = "1h",
    before_expiry: str = "5m",
    active_within: str = "30m",
) -> Config:
    """The core flow-T config on the test's folders; keyword arguments replace the defaults."""
    refresh = {
        "path": "/auth/tokenRefresh",
        "method": "GET",
        "check_every": check_every,
        "before_expiry": before_expiry,
        "active_within": active_within,
    }
    return ConfigYaml(
        folders,
        TARGET,
        emulator.base_url,
        shutdown_grace="2s",
        concurrency=concurrency,
        retry=Retry(attempts, backoff, max_backoff),
        api_timeout="10s",
        auth=token_auth(refresh=refresh, header="Bearer {token}"),
        upload=ENVIO_UPLOAD,
    ).load(ENVIRON)


def counts(runner: DaemonThread) -> TargetCounts:
    """The journal's per-state counts, read on the daemon's loop thread."""
    assert runner.daemon is not None
    daemon = runner.daemon
    result: TargetCounts = runner.run_coroutine(daemon.journal.counts(TARGET))
    return result


def credential_of(runner: DaemonThread) -> ManagedTokenCredential:
    assert runner.daemon is not None
    credential = runner.daemon.services[0].credential
    assert isinstance(credential, ManagedTokenCredential)
    return credential


def received_names(emulator: Emulator) -> list[str]:
    return [received.name for received in emulator.received]


def uploads_received(emulator: Emulator, count: int) -> bool:
    return emulator.wait_for(lambda emu: len(emu.received) >= count, TIMEOUT)


def envio_requests(emulator: Emulator) -> list[Any]:
    return [record for record in emulator.requests if (record.method, record.path) == ("POST", "/api/envio")]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def short_lived(tmp_path: Path, fake_clock: FakeClock) -> Iterator[Emulator]:
    """An emulator issuing 30-second tokens, judging expiry by the test's fake clock."""
    settings = EmulatorSettings(
        storage_dir=tmp_path / "server",
        users={"uploader": PASSWORD},
        token_lifetime=30.0,
        clock=fake_clock.now,
    )
    with Emulator(settings) as running:
        yield running


# --- delivery --------------------------------------------------------------------------


def test_many_files_arrive_intact_archived_and_done_with_one_login(
    emulator: Emulator, folders: dict[str, Path]
) -> None:
    """200 small files and three of 1-5 MB all arrive with the right sha256, archived, journal done."""
    contents = {
        f"small-{number:03}.csv": f"id,value\n{number},{number * 7}\n".encode() for number in range(200)
    }
    for megabytes in (1, 3, 5):
        contents[f"big-{megabytes}mb.bin"] = os.urandom(megabytes * 1024 * 1024)

    with running_daemon(flow_t_config(emulator, folders)) as runner:
        for name, data in contents.items():
            (folders["drop"] / name).write_bytes(data)
        wait_until(lambda: counts(runner).done == len(contents), 40, "every file done in the journal")
        assert TargetCounts(done=len(contents)) == counts(runner)

    assert {name: sha256(data) for name, data in contents.items()} == {
        received.name: received.sha256 for received in emulator.received
    }
    assert len(contents) == len(emulator.received)
    assert sorted(contents) == sorted(path.name for path in folders["sent"].iterdir())
    assert [] == list(folders["drop"].iterdir())
    assert 1 == emulator.counters["logins"]
    assert 0 == emulator.counters["expired_token_uses"]


def test_half_written_file_is_uploaded_only_after_its_writer_closes_it(
    emulator: Emulator, folders: dict[str, Path]
) -> None:
    """A file held open mid-write is not sent, even after a later file went; closed, it goes whole."""
    first_half, second_half = b"a" * 100_000, b"b" * 100_000

    with running_daemon(flow_t_config(emulator, folders)):
        with (folders["drop"] / "export.csv").open("wb") as writer:
            writer.write(first_half)
            writer.flush()
            (folders["drop"] / "marker.csv").write_text("written after export.csv was opened")
            assert uploads_received(emulator, 1)
            assert ["marker.csv"] == received_names(emulator)
            writer.write(second_half)
        assert uploads_received(emulator, 2)

    assert ["marker.csv", "export.csv"] == received_names(emulator)
    assert sha256(first_half + second_half) == emulator.received[1].sha256
    assert len(first_half + second_half) == emulator.received[1].size


def test_file_being_written_when_the_daemon_starts_waits_for_its_writer(
    emulator: Emulator, folders: dict[str, Path]
) -> None:
    """A file opened before the watch began is not sent while its writer keeps writing."""
    first_half, second_half = b"a" * 1000, b"b" * 1000

    with (folders["drop"] / "export.csv").open("wb") as writer:
        writer.write(first_half)
        writer.flush()
        with running_daemon(flow_t_config(emulator, folders)):
            (folders["drop"] / "marker.csv").write_text("m")
            assert uploads_received(emulator, 1)
            assert ["marker.csv"] == received_names(emulator)
            writer.write(second_half)
            writer.flush()
            writer.close()
            assert uploads_received(emulator, 2)

    assert ["marker.csv", "export.csv"] == received_names(emulator)
    assert sha256(first_half + second_half) == emulator.received[1].sha256


def test_file_renamed_in_from_a_part_name_is_uploaded_under_its_final_name_only(
    emulator: Emulator, folders: dict[str, Path]
) -> None:
    """Write `x.part`, rename it to `x.csv`: only `x.csv` is uploaded, once."""
    with running_daemon(flow_t_config(emulator, folders)) as runner:
        staging = folders["drop"] / "x.part"
        staging.write_text("id\n1\n")
        staging.rename(folders["drop"] / "x.csv")
        assert uploads_received(emulator, 1)
        wait_until(lambda: counts(runner).done == 1, TIMEOUT, "x.csv done")
        assert TargetCounts(done=1) == counts(runner)

    assert ["x.csv"] == received_names(emulator)
    assert ["x.csv"] == [path.name for path in folders["sent"].iterdir()]


# --- token renewal ---------------------------------------------------------------------


def test_token_is_refreshed_with_the_old_token_when_near_expiry_while_uploads_happen(
    short_lived: Emulator, folders: dict[str, Path], fake_clock: FakeClock
) -> None:
    """Near expiry right after an upload, a tick refreshes via GET /auth/tokenRefresh with `Bearer <old>`."""
    config = flow_t_config(short_lived, folders, before_expiry="10s", active_within="1m")
    with running_daemon(config, clock=fake_clock) as runner:
        (folders["drop"] / "a.csv").write_text("a")
        assert uploads_received(short_lived, 1)
        old_authorization = envio_requests(short_lived)[0].authorization
        fake_clock.advance(25)  # 5 s left, less than before_expiry; the upload was 25 s ago
        credential = credential_of(runner)
        runner.run_coroutine(credential.renew_if_due())

        assert 1 == short_lived.counters["refreshes"]
        refreshes = [record for record in short_lived.requests if record.path == "/auth/tokenRefresh"]
        assert [("GET", 200, old_authorization)] == [
            (record.method, record.status, record.authorization) for record in refreshes
        ]
        assert fake_clock.now() + 30 == credential.expires_at
        (folders["drop"] / "b.csv").write_text("b")
        assert uploads_received(short_lived, 2)

    assert old_authorization != envio_requests(short_lived)[1].authorization
    assert 1 == short_lived.counters["logins"]
    assert 0 == short_lived.counters["expired_token_uses"]


def test_token_is_refreshed_while_files_wait_even_without_a_recent_upload(
    short_lived: Emulator, folders: dict[str, Path], fake_clock: FakeClock
) -> None:
    """A file waiting on a retry keeps the API active: the tick refreshes though no request went lately."""
    config = flow_t_config(short_lived, folders, before_expiry="10s", active_within="5s")
    with running_daemon(config, clock=fake_clock) as runner:
        short_lived.script("POST", "/api/envio", ScriptedResponse(503, "busy", {"Retry-After": "30"}))
        (folders["drop"] / "waiting.csv").write_text("w")
        assert short_lived.wait_for(lambda emu: len(envio_requests(emu)) == 1, TIMEOUT)
        assert runner.daemon is not None
        schedule = runner.daemon.services[0].schedule
        wait_until(lambda: runner.call(schedule.files_waiting), TIMEOUT, "waiting.csv backing off")
        fake_clock.advance(25)  # 5 s left; the API was last used 25 s ago, longer than active_within

        runner.run_coroutine(credential_of(runner).renew_if_due())

        assert 1 == short_lived.counters["refreshes"]


def test_refresh_is_skipped_while_idle_and_the_next_upload_logs_in_again(
    short_lived: Emulator, folders: dict[str, Path], fake_clock: FakeClock
) -> None:
    """Idle past `active_within`: the tick lets the token lapse; the next file logs in, never sends it."""
    config = flow_t_config(short_lived, folders, before_expiry="10s", active_within="5s")
    with structlog.testing.capture_logs() as logs, running_daemon(config, clock=fake_clock) as runner:
        (folders["drop"] / "a.csv").write_text("a")
        assert uploads_received(short_lived, 1)
        wait_until(lambda: counts(runner).done == 1, TIMEOUT, "a.csv done")
        fake_clock.advance(25)  # 5 s left, but the last upload was 25 s ago: idle

        runner.run_coroutine(credential_of(runner).renew_if_due())

        assert 0 == short_lived.counters["refreshes"]
        skipped = [entry for entry in logs if entry["event"] == "token_renewal_skipped"]
        assert [("idle", TARGET)] == [(entry["reason"], entry["target"]) for entry in skipped]

        fake_clock.advance(10)  # the token has now expired
        (folders["drop"] / "b.csv").write_text("b")
        assert uploads_received(short_lived, 2)

    assert 0 == short_lived.counters["refreshes"]
    assert 2 == short_lived.counters["logins"]
    assert 0 == short_lived.counters["expired_token_uses"]


# --- 401 and login failures --------------------------------------------------------------


@pytest.mark.parametrize("rejection", ["revoked token", "scripted 401"])
def test_401_aborts_the_upload_logs_it_and_delivers_after_a_fresh_login(
    emulator: Emulator, folders: dict[str, Path], rejection: str
) -> None:
    """A 401 is logged at error level with status, target and file; the file stays, goes after a new login."""
    with structlog.testing.capture_logs() as logs, running_daemon(flow_t_config(emulator, folders)) as runner:
        (folders["drop"] / "first.csv").write_text("1")
        assert uploads_received(emulator, 1)
        if rejection == "revoked token":
            emulator.revoke_tokens()
        else:
            emulator.script("POST", "/api/envio", ScriptedResponse(401, {"error": "token rejected"}))
        (folders["drop"] / "second.csv").write_text("2")
        assert uploads_received(emulator, 2)
        wait_until(lambda: counts(runner).done == 2, TIMEOUT, "second.csv done")
        final_counts = counts(runner)

    unauthorized = [entry for entry in logs if entry["event"] == "upload_unauthorized"]
    assert [("error", 401, TARGET, "second.csv")] == [
        (entry["log_level"], entry["status"], entry["target"], entry["file"]) for entry in unauthorized
    ]
    assert [401, 200] == [record.status for record in envio_requests(emulator)[1:]]
    assert ["first.csv", "second.csv"] == received_names(emulator)
    assert 2 == emulator.counters["logins"]
    assert 0 == emulator.counters["expired_token_uses"]
    assert 2 == final_counts.done
    assert 0 == final_counts.failed
    assert not folders["failed"].exists() or [] == list(folders["failed"].iterdir())
    assert ["first.csv", "second.csv"] == sorted(path.name for path in folders["sent"].iterdir())


def test_login_failure_is_logged_without_the_password_and_nothing_is_uploaded_until_login_works(
    emulator: Emulator, folders: dict[str, Path]
) -> None:
    """While login fails no upload is attempted and files stay pending; once it works they are delivered."""
    emulator.set_login_enabled(False)
    names = ["a.csv", "b.csv", "c.csv"]
    config = flow_t_config(emulator, folders, backoff="200ms", max_backoff="400ms")
    with structlog.testing.capture_logs() as logs, running_daemon(config) as runner:
        for name in names:
            (folders["drop"] / name).write_text(name)
        assert emulator.wait_for(lambda emu: emu.counters["failed_logins"] >= 2, TIMEOUT)
        wait_until(lambda: counts(runner).pending == len(names), TIMEOUT, "every file pending")

        assert 0 == emulator.counters["uploads"]
        assert [] == envio_requests(emulator)
        assert names == sorted(path.name for path in folders["drop"].iterdir())
        assert TargetCounts(pending=len(names)) == counts(runner)

        emulator.set_login_enabled(True)
        assert uploads_received(emulator, len(names))
        wait_until(lambda: counts(runner).done == len(names), TIMEOUT, "every file done")

    failures = [entry for entry in logs if entry["event"] == "login_failed"]
    assert failures
    assert {("error", TARGET, 401)} == {
        (entry["log_level"], entry["target"], entry["status"]) for entry in failures
    }
    assert not any(PASSWORD in repr(entry) for entry in logs)
    assert names == sorted(received_names(emulator))
    assert 1 == emulator.counters["logins"]
    assert [200] * len(names) == [record.status for record in envio_requests(emulator)]


# --- other outcomes ----------------------------------------------------------------------


def test_503_with_retry_after_is_retried_no_sooner_than_asked_then_delivered(
    emulator: Emulator, folders: dict[str, Path]
) -> None:
    """A transient 503 is retried after `Retry-After` (a floor over the 100 ms backoff), then succeeds."""
    emulator.script("POST", "/api/envio", ScriptedResponse(503, "maintenance", {"Retry-After": "1"}))
    with running_daemon(flow_t_config(emulator, folders)) as runner:
        (folders["drop"] / "a.csv").write_text("a")
        assert uploads_received(emulator, 1)
        wait_until(lambda: counts(runner).done == 1, TIMEOUT, "a.csv done")

    first, second = envio_requests(emulator)
    assert (503, 200) == (first.status, second.status)
    assert second.time - first.time >= 1.0
    assert ["a.csv"] == [path.name for path in folders["sent"].iterdir()]


def read_sidecar(folders: dict[str, Path], name: str) -> dict[str, Any]:
    report: dict[str, Any] = json.loads((folders["failed"] / f"{name}.error.json").read_text())
    return report


def test_permanent_400_moves_the_file_to_failed_dir_with_a_sidecar_at_once(
    emulator: Emulator, folders: dict[str, Path]
) -> None:
    """A 400 is not retried: the file and `<name>.error.json` (status, body, attempts, time) are failed."""
    emulator.script("POST", "/api/envio", ScriptedResponse(400, {"error": "columns do not match"}))
    with running_daemon(flow_t_config(emulator, folders)) as runner:
        (folders["drop"] / "bad.csv").write_text("x")
        wait_until(lambda: counts(runner).failed == 1, TIMEOUT, "bad.csv failed")
        assert TargetCounts(
            failed=1, last_error=counts(runner).last_error, last_error_at=counts(runner).last_error_at
        ) == counts(runner)

    assert ["bad.csv", "bad.csv.error.json"] == sorted(path.name for path in folders["failed"].iterdir())
    assert "x" == (folders["failed"] / "bad.csv").read_text()
    report = read_sidecar(folders, "bad.csv")
    assert (400, 1, TARGET, "bad.csv") == (
        report["status"],
        report["attempts"],
        report["target"],
        report["file"],
    )
    assert "columns do not match" in report["body_excerpt"]
    assert report["failed_at"]
    assert 1 == len(envio_requests(emulator))
    assert [] == list(folders["drop"].iterdir())


def test_repeated_500s_exhaust_the_attempts_and_move_the_file_to_failed_dir(
    emulator: Emulator, folders: dict[str, Path]
) -> None:
    """Three 500s with `attempts: 3` fail the file to failed_dir with a sidecar saying so."""
    emulator.script("POST", "/api/envio", *[ScriptedResponse(500, "storage exploded")] * 3)
    with running_daemon(flow_t_config(emulator, folders, attempts=3)) as runner:
        (folders["drop"] / "unlucky.csv").write_text("x")
        wait_until(lambda: counts(runner).failed == 1, TIMEOUT, "unlucky.csv failed")

    report = read_sidecar(folders, "unlucky.csv")
    assert (500, 3) == (report["status"], report["attempts"])
    assert "storage exploded" in report["body_excerpt"]
    assert [500, 500, 500] == [record.status for record in envio_requests(emulator)]
    assert [] == emulator.received
    assert (folders["failed"] / "unlucky.csv").exists()
