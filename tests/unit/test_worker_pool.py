"""The worker pool end to end: the real schedule, intake, execution and outcomes on an
in-memory journal, with respx at the HTTP edge and fake credentials."""

from __future__ import annotations

import asyncio
import contextlib
import errno
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import respx
from structlog.testing import capture_logs

from tests.helpers import FakeClock
from tests.unit.pooling import (
    DEADLINE,
    UPLOAD_URL,
    LoginFailingCredential,
    Logs,
    Pool,
    PoolOptions,
    RefusingFolder,
    RenewingCredential,
    build_pool,
    client,
    drop,
    events_named,
    eventually,
    identity_of,
    loop_time,
    target_settings,
)
from uploader_daemon.config.schema import TargetSettings
from uploader_daemon.journal import Disposition, FileState

CONTENT = b"id,name\n1,alpha\n"
HANG = "hang"  # a scripted answer that never comes


class Api:
    """The upload endpoint's scripted answers, one per request; the last one repeats.

    An answer is a status code, :data:`HANG`, or a callable taking the request.
    """

    def __init__(self, *answers: int | str | Callable[[httpx.Request], httpx.Response]) -> None:
        self._answers = list(answers)
        self.requests: list[httpx.Request] = []
        self.times: list[float] = []  # loop time of each request
        self._never = asyncio.Event()

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.times.append(loop_time())
        answer = self._answers.pop(0) if len(self._answers) > 1 else self._answers[0]
        if answer == HANG:
            await self._never.wait()
        if callable(answer):
            return answer(request)
        assert isinstance(answer, int)
        return httpx.Response(answer, json={"id": len(self.requests)})


def run(
    target: TargetSettings,
    api: Api,
    scenario: Callable[[Pool], Awaitable[None]],
    options: PoolOptions | None = None,
    *,
    grace: float = 1.0,
    live: Logs | None = None,
    start: bool = True,
) -> Logs:
    """Start the pool, run ``scenario``, stop the pool; returns the events logged meanwhile.

    ``live`` is the list of a capture the caller holds open, for a scenario that waits on
    log events; otherwise ``run`` captures on its own. With ``start=False`` the scenario
    starts the workers itself.
    """

    async def main() -> None:
        async with client() as http:
            pool = build_pool(target, http, options)
            with respx.mock(assert_all_called=False) as router:
                router.post(UPLOAD_URL).mock(side_effect=api)
                if start:
                    pool.workers.start()
                try:
                    await asyncio.wait_for(scenario(pool), DEADLINE)
                finally:
                    await pool.workers.stop(grace)
                    await pool.intake.stop()
            await pool.backend.close()

    with contextlib.nullcontext(live) if live is not None else capture_logs() as logs:
        asyncio.run(main())
    return logs


async def done(pool: Pool, name: str) -> None:
    """Wait until the journal's row for ``name`` is finished and the schedule let it go."""

    async def finished() -> bool:
        return await pool.state_of(name) in ("done", "failed", "gone")

    deadline = loop_time() + DEADLINE
    while not (await finished() and not pool.schedule.is_scheduled(name)):
        assert loop_time() < deadline, f"{name} never finished"
        await asyncio.sleep(0.005)


def offer(pool: Pool, name: str, content: bytes = CONTENT) -> Path:
    path = drop(pool.target, name, content)
    pool.intake.offer(name)
    return path


def worker_tasks() -> list[asyncio.Task[Any]]:
    return [task for task in asyncio.all_tasks() if task.get_name().startswith("docs-worker")]


# --- retries ---------------------------------------------------------------------------


def test_a_file_is_retried_after_server_errors_until_it_is_delivered(tmp_path: Path) -> None:
    """Two 500s (the file's own failures), then 201: delivered and archived, two attempts counted."""
    target = target_settings(tmp_path, attempts=5)
    api = Api(500, 500, 201)

    async def scenario(pool: Pool) -> None:
        offer(pool, "a.csv")
        await done(pool, "a.csv")
        record = await pool.record("a.csv")
        assert (FileState.DONE, Disposition.ARCHIVED, 2, 500) == (
            record.state,
            record.disposition,
            record.attempts,
            record.last_status,
        )

    logs = run(target, api, scenario)
    assert 3 == len(api.requests)
    assert [1, 2] == [event["attempt"] for event in events_named(logs, "delivery_failed")]
    assert CONTENT == (tmp_path / "sent" / "a.csv").read_bytes()


def test_a_file_that_keeps_failing_is_parked_after_its_last_attempt(tmp_path: Path) -> None:
    """retry.attempts 500s: the file goes to failed_dir; no further request."""
    target = target_settings(tmp_path, attempts=2)
    api = Api(500)

    async def scenario(pool: Pool) -> None:
        offer(pool, "a.csv")
        await done(pool, "a.csv")
        record = await pool.record("a.csv")
        assert (FileState.FAILED, Disposition.PARKED, 2) == (
            record.state,
            record.disposition,
            record.attempts,
        )

    run(target, api, scenario)
    assert 2 == len(api.requests)
    assert (tmp_path / "failed" / "a.csv.error.json").exists()


def test_a_401_discards_exactly_the_refused_token_and_the_retry_uses_the_renewed_one(
    tmp_path: Path,
) -> None:
    """The credential hears which generation was refused; the retry carries the next one."""
    target = target_settings(tmp_path)
    credential = RenewingCredential()
    api = Api(401, 201)

    async def scenario(pool: Pool) -> None:
        offer(pool, "a.csv")
        await done(pool, "a.csv")
        assert FileState.DONE == (await pool.record("a.csv")).state

    logs = run(target, api, scenario, PoolOptions(credential=credential))
    assert [1] == credential.rejections
    assert ["Bearer token-1", "Bearer token-2"] == [r.headers["Authorization"] for r in api.requests]
    (unauthorized,) = events_named(logs, "upload_unauthorized")
    assert "error" == unauthorized["log_level"]


# --- the pause while unauthenticated ---------------------------------------------------


def test_nothing_is_sent_while_the_login_backs_off_and_no_attempt_is_counted(tmp_path: Path) -> None:
    """A failed login pauses the whole target until its retry_at; then every file goes."""
    target = target_settings(tmp_path, concurrency=1)
    clock = FakeClock()
    credential = LoginFailingCredential(clock, failures=1, delay=0.3)
    api = Api(201)

    async def scenario(pool: Pool) -> None:
        offer(pool, "a.csv")
        await eventually(lambda: credential.failed_at, message="the failed login")
        assert pool.schedule.held
        offer(pool, "b.csv")  # arrives during the pause: waits too
        await done(pool, "a.csv")
        await done(pool, "b.csv")
        for name in ("a.csv", "b.csv"):
            record = await pool.record(name)
            assert (FileState.DONE, 0, None) == (record.state, record.attempts, record.last_error)

    run(target, api, scenario, PoolOptions(credential=credential, clock=clock))
    assert 2 == len(api.requests)
    pause_over = credential.failed_at[0] + 0.3
    assert [] == [moment for moment in api.times if moment < pause_over - 0.002]


def test_503s_are_an_outage_that_holds_the_file_without_spending_its_attempts(tmp_path: Path) -> None:
    """attempts: 2, yet three 503s in a row park nothing: the target holds, probes, then delivers."""
    target = target_settings(tmp_path, attempts=2)
    api = Api(503, 503, 503, 201)

    async def scenario(pool: Pool) -> None:
        offer(pool, "a.csv")
        await done(pool, "a.csv")
        record = await pool.record("a.csv")
        assert (FileState.DONE, 0) == (record.state, record.attempts)

    logs = run(target, api, scenario)
    assert 4 == len(api.requests)
    assert 1 == len(events_named(logs, "api_outage_started"))
    assert 1 == len(events_named(logs, "api_outage_ended"))
    failed_dir = tmp_path / "failed"
    assert [] == (list(failed_dir.iterdir()) if failed_dir.exists() else [])


# --- after-upload retries --------------------------------------------------------------


def test_a_failing_archive_move_is_retried_without_sending_the_file_again(tmp_path: Path) -> None:
    """archive_dir unusable for a while: the move is retried with backoff; one request in all."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the archive's parent folder should be")
    target = target_settings(tmp_path)
    target = target.model_copy(
        update={"after_upload": target.after_upload.model_copy(update={"archive_dir": blocker / "sent"})}
    )
    api = Api(201)
    filing_only: list[bool] = []

    async def scenario(pool: Pool) -> None:
        offer(pool, "a.csv")
        await eventually(lambda: len(events_named(logs, "after_upload_failed")) >= 2, message="two tries")
        assert FileState.DELIVERED == (await pool.record("a.csv")).state
        filing_only.append(pool.schedule.is_scheduled("a.csv") and not pool.schedule.files_waiting())
        blocker.unlink()
        await done(pool, "a.csv")

    with capture_logs() as logs:
        run(target, api, scenario, live=logs)
    assert [True] == filing_only
    assert 1 == len(api.requests)
    assert CONTENT == (blocker / "sent" / "a.csv").read_bytes()


def test_a_delivered_row_found_after_a_restart_is_filed_away_without_a_request(tmp_path: Path) -> None:
    """The journal said delivered: the pool only archives it."""
    target = target_settings(tmp_path)
    api = Api(201)

    async def scenario(pool: Pool) -> None:
        path = drop(target, "a.csv", CONTENT)
        now = pool.clock.now()
        record = await pool.backend.admit(target.name, "a.csv", identity_of(path), now)
        assert record is not None
        claim = await pool.backend.claim(record.id, "a-crashed-run", now)
        assert claim is not None
        await pool.backend.delivered(claim, now)
        await pool.backend.release_claims("a-crashed-run", now)
        assert 1 == await pool.intake.resume_unfinished()
        await done(pool, "a.csv")
        assert Disposition.ARCHIVED == (await pool.record("a.csv")).disposition

    run(target, api, scenario)
    assert [] == api.requests


# --- disk errors -----------------------------------------------------------------------


def test_a_journal_that_fails_for_a_while_neither_kills_a_worker_nor_loses_the_file(tmp_path: Path) -> None:
    """step_started raising twice (a full disk): worker_error twice, then the file is delivered."""
    target = target_settings(tmp_path, attempts=5, concurrency=2)
    api = Api(201)
    alive: list[int] = []

    async def scenario(pool: Pool) -> None:
        pool.journal.break_for("step_started", times=2)
        offer(pool, "a.csv")
        await done(pool, "a.csv")
        alive.append(sum(1 for task in worker_tasks() if not task.done()))
        record = await pool.record("a.csv")
        assert (FileState.DONE, 2) == (record.state, record.attempts)

    logs = run(target, api, scenario, PoolOptions(flaky=True))
    assert [2] == alive
    errors = events_named(logs, "worker_error")
    assert ["OperationalError", "OperationalError"] == [event["error_type"] for event in errors]
    assert 1 == len(api.requests)


def test_a_claim_that_fails_is_tried_again_later(tmp_path: Path) -> None:
    """The journal refuses the claim itself: nothing to release; the file goes after max_backoff."""
    target = target_settings(tmp_path)
    api = Api(201)

    async def scenario(pool: Pool) -> None:
        pool.journal.break_for("claim", times=1)
        offer(pool, "a.csv")
        await done(pool, "a.csv")
        assert (FileState.DONE, 0) == (
            (await pool.record("a.csv")).state,
            (await pool.record("a.csv")).attempts,
        )

    logs = run(target, api, scenario, PoolOptions(flaky=True))
    assert 1 == len(events_named(logs, "worker_error"))
    assert 1 == len(api.requests)


def test_a_recovery_that_fails_too_retries_the_file_later(tmp_path: Path) -> None:
    """The journal fails during the recovery as well: worker_recovery_failed, then delivered."""
    target = target_settings(tmp_path, attempts=5)
    api = Api(201)

    async def scenario(pool: Pool) -> None:
        pool.journal.break_for("step_started", times=1)
        pool.journal.break_for("get", times=1)
        offer(pool, "a.csv")
        await done(pool, "a.csv")

    logs = run(target, api, scenario, PoolOptions(flaky=True))
    assert 1 == len(events_named(logs, "worker_recovery_failed"))
    assert 1 == len(api.requests)


def test_a_journal_write_failing_after_the_delivery_files_the_file_away_later(tmp_path: Path) -> None:
    """finish() raising once after the archive move: the file is not sent again."""
    target = target_settings(tmp_path, after_upload="keep")
    api = Api(201)

    async def scenario(pool: Pool) -> None:
        pool.journal.break_for("finish", times=1)
        offer(pool, "a.csv")
        await done(pool, "a.csv")
        assert Disposition.KEPT == (await pool.record("a.csv")).disposition

    logs = run(target, api, scenario, PoolOptions(flaky=True))
    assert 1 == len(events_named(logs, "worker_error"))
    assert 1 == len(api.requests)


def test_an_archived_file_whose_journal_write_failed_is_still_recorded_as_archived(tmp_path: Path) -> None:
    """finish() raising once after the archive move: the retry must not record it as vanished."""
    target = target_settings(tmp_path)
    api = Api(201)

    async def scenario(pool: Pool) -> None:
        pool.journal.break_for("finish", times=1)
        offer(pool, "a.csv")
        await done(pool, "a.csv")
        assert Disposition.ARCHIVED == (await pool.record("a.csv")).disposition

    run(target, api, scenario, PoolOptions(flaky=True))


# --- other endings ---------------------------------------------------------------------


def test_a_file_written_to_during_its_upload_is_handed_back_to_settle_again(tmp_path: Path) -> None:
    """CHANGED_DURING: that version is done as changed, and the watcher resettles the path."""
    target = target_settings(tmp_path)

    def append(request: httpx.Request) -> httpx.Response:
        with (target.folder / "a.csv").open("ab") as handle:
            handle.write(b"2,beta\n")
        return httpx.Response(201)

    api = Api(append)

    async def scenario(pool: Pool) -> None:
        offer(pool, "a.csv")
        await done(pool, "a.csv")
        assert Disposition.CHANGED == (await pool.record("a.csv")).disposition
        assert ["a.csv"] == pool.resettles.paths
        assert (target.folder / "a.csv").exists()

    run(target, api, scenario)


def test_a_file_rewritten_before_its_turn_is_released_and_resettled(tmp_path: Path) -> None:
    """CHANGED_BEFORE: nothing sent, the row back to pending, the watcher resettles it."""
    target = target_settings(tmp_path)
    api = Api(201)

    async def scenario(pool: Pool) -> None:
        path = offer(pool, "a.csv")
        await eventually(lambda: pool.schedule.is_scheduled("a.csv"))
        path.write_bytes(CONTENT + b"2,beta\n")
        pool.workers.start()
        await eventually(lambda: pool.resettles.paths)
        assert ["a.csv"] == pool.resettles.paths
        assert FileState.PENDING == (await pool.record("a.csv")).state
        assert not pool.schedule.is_scheduled("a.csv")

    logs = run(target, api, scenario, start=False)
    assert [] == api.requests
    assert 1 == len(events_named(logs, "file_changed_before_upload"))


def test_a_file_removed_before_its_turn_is_forgotten(tmp_path: Path) -> None:
    """VANISHED: the journal says gone; a warning names the file."""
    target = target_settings(tmp_path)
    api = Api(201)

    async def scenario(pool: Pool) -> None:
        path = offer(pool, "a.csv")
        await eventually(lambda: pool.schedule.is_scheduled("a.csv"))
        path.unlink()
        pool.workers.start()
        await done(pool, "a.csv")
        assert FileState.GONE == (await pool.record("a.csv")).state

    logs = run(target, api, scenario, start=False)
    assert "a.csv" == events_named(logs, "file_vanished")[0]["file"]


def test_an_unreadable_file_is_warned_about_once_and_goes_once_readable(tmp_path: Path) -> None:
    """UNREADABLE: no attempt used, one warning per file, tried again at the next offer."""
    target = target_settings(tmp_path)
    folders: list[RefusingFolder] = []

    def refusing(target: TargetSettings) -> RefusingFolder:
        folders.append(RefusingFolder(target, errno.EACCES))
        return folders[-1]

    api = Api(201)

    async def scenario(pool: Pool) -> None:
        def refused(times: int) -> Callable[[], bool]:
            return lambda: folders[0].refusals == times

        for rescan in (1, 2):  # two rescans find it, still unreadable
            offer(pool, "a.csv")
            await eventually(refused(rescan))
            await eventually(lambda: not pool.schedule.is_scheduled("a.csv"))
            assert FileState.PENDING == (await pool.record("a.csv")).state
        folders[0].refusing = False
        offer(pool, "a.csv")
        await done(pool, "a.csv")
        assert (FileState.DONE, 0) == (
            (await pool.record("a.csv")).state,
            (await pool.record("a.csv")).attempts,
        )

    logs = run(target, api, scenario, PoolOptions(folder=refusing))
    assert 1 == len(events_named(logs, "file_unreadable"))
    assert 1 == len(api.requests)


def test_a_permanent_refusal_parks_the_file_at_once(tmp_path: Path) -> None:
    """A 400 is not retried: failed_dir after one request."""
    target = target_settings(tmp_path, attempts=5)
    api = Api(400)

    async def scenario(pool: Pool) -> None:
        offer(pool, "a.csv")
        await done(pool, "a.csv")
        assert Disposition.PARKED == (await pool.record("a.csv")).disposition

    run(target, api, scenario)
    assert 1 == len(api.requests)


# --- stopping and dying ----------------------------------------------------------------


def test_stop_cuts_off_a_hanging_upload_after_the_grace_period_and_keeps_it_pending(tmp_path: Path) -> None:
    """upload_abandoned names the file; the journal row is pending again, for the next start."""
    target = target_settings(tmp_path, concurrency=2)
    api = Api(HANG)

    async def scenario(pool: Pool) -> None:
        offer(pool, "a.csv")
        await eventually(lambda: api.requests, message="the upload request")

    logs = run(target, api, scenario, grace=0.05)
    (waiting,) = events_named(logs, "waiting_for_uploads")
    assert (1, 0.05) == (waiting["files"], waiting["grace"])
    (abandoned,) = events_named(logs, "upload_abandoned")
    assert ("warning", "a.csv") == (abandoned["log_level"], abandoned["file"])


def test_an_upload_cut_off_by_stop_is_pending_in_the_journal(tmp_path: Path) -> None:
    """The claim is released: pending, no owner, no attempt counted."""
    target = target_settings(tmp_path)
    api = Api(HANG)
    records: list[Any] = []

    async def main() -> None:
        async with client() as http:
            pool = build_pool(target, http)
            with respx.mock(assert_all_called=False) as router:
                router.post(UPLOAD_URL).mock(side_effect=api)
                pool.workers.start()
                offer(pool, "a.csv")
                await eventually(lambda: api.requests)
                await pool.workers.stop(0.01)
                records.append(await pool.record("a.csv"))
            await pool.backend.close()

    asyncio.run(main())
    (record,) = records
    assert (FileState.PENDING, None, 0) == (record.state, record.owner, record.attempts)


def test_abort_during_a_graceful_stop_cuts_the_upload_off_at_once(tmp_path: Path) -> None:
    """A second stop signal: stop() returns long before its grace period, the row is pending."""
    target = target_settings(tmp_path)
    api = Api(HANG)
    measured: list[float] = []

    async def scenario(pool: Pool) -> None:
        offer(pool, "a.csv")
        await eventually(lambda: api.requests)
        started = loop_time()
        stopping = asyncio.create_task(pool.workers.stop(60.0))
        await eventually(lambda: events_named(logs, "waiting_for_uploads"))
        pool.workers.abort()
        await stopping
        measured.append(loop_time() - started)
        assert FileState.PENDING == (await pool.record("a.csv")).state

    with capture_logs() as logs:
        run(target, api, scenario, live=logs)
    assert measured[0] < 5.0
    assert [] == events_named(logs, "worker_died")


def test_a_worker_cancelled_by_accident_while_idle_is_replaced(tmp_path: Path) -> None:
    """worker_died at critical level, and the pool keeps its size and delivers."""
    target = target_settings(tmp_path, concurrency=2)
    api = Api(201)
    alive: list[int] = []

    async def scenario(pool: Pool) -> None:
        await eventually(lambda: len(worker_tasks()) == 2)
        worker_tasks()[0].cancel()
        await eventually(lambda: events_named(logs, "worker_died"), message="the replacement")
        alive.append(sum(1 for task in worker_tasks() if not task.done()))
        offer(pool, "after.csv")
        await done(pool, "after.csv")

    with capture_logs() as logs:
        run(target, api, scenario, live=logs)
    assert [2] == alive
    (died,) = events_named(logs, "worker_died")
    assert ("critical", "cancelled") == (died["log_level"], died["error"])
    assert 1 == len(api.requests)


def test_a_worker_cancelled_in_the_middle_of_an_upload_is_replaced_and_the_file_retried(
    tmp_path: Path,
) -> None:
    """The interrupted file goes back to pending and is delivered by the replacement."""
    target = target_settings(tmp_path)
    api = Api(HANG, 201)

    async def scenario(pool: Pool) -> None:
        offer(pool, "a.csv")
        await eventually(lambda: api.requests)
        (worker,) = worker_tasks()
        worker.cancel()
        await done(pool, "a.csv")
        assert (FileState.DONE, 0) == (
            (await pool.record("a.csv")).state,
            (await pool.record("a.csv")).attempts,
        )

    logs = run(target, api, scenario)
    assert 1 == len(events_named(logs, "worker_died"))
    assert 2 == len(api.requests)


def test_an_idle_pool_stops_at_once(tmp_path: Path) -> None:
    """No upload in flight: stop() does not wait for the grace period."""
    target = target_settings(tmp_path, concurrency=3)
    api = Api(201)
    stopped: list[float] = []

    async def main() -> None:
        async with client() as http:
            pool = build_pool(target, http)
            pool.workers.start()
            await asyncio.sleep(0)
            started = loop_time()
            await pool.workers.stop(30.0)
            stopped.append(loop_time() - started)
            assert [] == [task for task in worker_tasks() if not task.done()]
            await pool.backend.close()

    asyncio.run(main())
    assert stopped[0] < 5.0
    assert [] == api.requests
