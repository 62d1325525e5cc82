"""A target wired whole: output folders made at start, files found by the first scan delivered."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
import respx
from structlog.testing import capture_logs

from tests.helpers import FakeClock
from tests.unit.pooling import DEADLINE, TOKEN, UPLOAD_URL, drop, events_named, eventually, target_settings
from uploader_daemon import readiness
from uploader_daemon.config.schema import TargetSettings
from uploader_daemon.errors import StateDirError
from uploader_daemon.journal import Disposition, FileState, SqliteJournal
from uploader_daemon.redaction import Redactor
from uploader_daemon.scheduler import Scheduler
from uploader_daemon.service import TargetService


def service_for(
    target: TargetSettings, journal: SqliteJournal, scheduler: Scheduler, tmp_path: Path
) -> TargetService:
    return TargetService(
        target,
        journal=journal,
        scheduler=scheduler,
        tokens_dir=tmp_path / "tokens",
        clock=FakeClock(),
        redactor=Redactor([TOKEN]),
        owner="this-node",
    )


def test_an_output_folder_that_cannot_be_created_stops_the_start_with_an_admin_error(tmp_path: Path) -> None:
    """StateDirError names the config key and the folder; nothing is started."""
    target = target_settings(tmp_path)
    target = target.model_copy(update={"failed_dir": tmp_path / "failed" / "docs"})
    # After the config was checked (which refuses this): the folder went wrong since.
    (tmp_path / "failed").write_text("a file where failed_dir's parent should be")

    async def scenario() -> None:
        journal = SqliteJournal.open(":memory:")
        service = service_for(target, journal, Scheduler(), tmp_path)
        try:
            with pytest.raises(StateDirError, match=r"target docs: cannot create failed_dir .*failed/docs"):
                await service.start()
        finally:
            await service.close()
            await journal.close()

    asyncio.run(scenario())


def test_a_started_target_delivers_the_files_that_were_waiting_and_stops_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """start(): folders made, the first scan finds the file, it is delivered and archived."""
    monkeypatch.setattr(readiness, "SCAN_SETTLE", 0.02)  # a scanned file's hold-still time, shortened
    target = target_settings(tmp_path, extra="watch: {rescan_every: 1h}")
    drop(target, "waiting.csv", b"id\n1\n")
    records: list[object] = []

    async def scenario() -> None:
        journal = SqliteJournal.open(":memory:")
        scheduler = Scheduler()
        scheduler.start()
        service = service_for(target, journal, scheduler, tmp_path)
        # respx's "httpx" mocker answers at the client, whatever its transport (the daemon's
        # own is not httpcore, which respx would patch by default).
        with respx.mock(assert_all_called=False, using="httpx") as router:
            route = router.post(UPLOAD_URL).mock(return_value=httpx.Response(201))
            await service.start()
            try:
                assert (tmp_path / "sent").is_dir()
                assert (tmp_path / "failed").is_dir()
                await eventually(lambda: (tmp_path / "sent" / "waiting.csv").exists(), message="the archive")
                assert f"Bearer {TOKEN}" == route.calls.last.request.headers["Authorization"]
            finally:
                await service.stop_watching()
                await service.stop(1.0)
                scheduler.shutdown()
                await service.close()
        records.extend(await journal.records("docs"))
        await journal.close()

    with capture_logs() as logs:
        asyncio.run(asyncio.wait_for(scenario(), DEADLINE))
    (record,) = records
    assert (FileState.DONE, Disposition.ARCHIVED) == (record.state, record.disposition)  # type: ignore[attr-defined]
    (watching,) = events_named(logs, "watching")
    assert (1, "events") == (watching["files_found"], watching["mode"])


def test_abort_cuts_off_the_targets_uploads(tmp_path: Path) -> None:
    """abort() during a graceful stop: the hanging upload is cancelled at once, its row pending again."""
    target = target_settings(tmp_path, extra="watch: {rescan_every: 1h}")
    states: list[FileState] = []
    requests: list[httpx.Request] = []

    async def hang(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        await asyncio.Event().wait()
        raise AssertionError("never answered")

    async def scenario() -> None:
        journal = SqliteJournal.open(":memory:")
        service = service_for(target, journal, Scheduler(), tmp_path)
        with respx.mock(assert_all_called=False, using="httpx") as router:
            router.post(UPLOAD_URL).mock(side_effect=hang)
            await service.start()
            drop(target, "a.csv")
            await eventually(lambda: requests, message="the upload")
            await service.stop_watching()
            stopping = asyncio.create_task(service.stop(60.0))  # as the daemon's shutdown does
            await asyncio.sleep(0)
            service.abort()  # the second stop signal
            await stopping
            await service.close()
        states.extend(record.state for record in await journal.records("docs"))
        await journal.close()

    with capture_logs() as logs:
        asyncio.run(asyncio.wait_for(scenario(), DEADLINE))
    assert [FileState.PENDING] == states
    assert [] == events_named(logs, "worker_died")
