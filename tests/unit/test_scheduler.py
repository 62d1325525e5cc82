"""Timed jobs on the daemon's loop: they run, survive their own errors, and stop on shutdown."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from structlog.testing import capture_logs

from tests.unit.pooling import DEADLINE, Logs, events_named, eventually
from uploader_daemon.scheduler import Scheduler


def run(scenario: Callable[[Scheduler], Awaitable[None]]) -> Logs:
    """Run ``scenario`` with a started scheduler on a running loop; shut it down after."""

    async def main() -> None:
        scheduler = Scheduler()
        scheduler.start()
        try:
            await asyncio.wait_for(scenario(scheduler), DEADLINE)
        finally:
            scheduler.shutdown()
            scheduler.abort_running()

    with capture_logs() as logs:
        asyncio.run(main())
    return logs


def test_an_interval_job_runs_again_and_again() -> None:
    """every(): a tick each interval, first one interval from now."""
    ticks: list[float] = []

    async def job() -> None:
        ticks.append(time.monotonic())

    async def scenario(scheduler: Scheduler) -> None:
        started = time.monotonic()
        scheduler.every("tick", 0.05, job)
        scheduler.every("tick", 0.05, job)  # the same id again replaces the job (no conflict error)
        await eventually(lambda: len(ticks) >= 3, message="three ticks")
        assert ticks[0] - started >= 0.04

    run(scenario)


def test_a_failing_job_is_logged_and_its_next_tick_still_comes() -> None:
    """A job never dies on an exception: scheduled_job_failed, then it runs again."""
    calls: list[int] = []

    async def job() -> None:
        calls.append(1)
        raise RuntimeError("the journal's disk is full")

    logs = run(lambda scheduler: failing(scheduler, job, calls))
    failures = events_named(logs, "scheduled_job_failed")
    assert len(failures) >= 2
    assert ("rescan", "the journal's disk is full", "RuntimeError") == (
        failures[0]["job"],
        failures[0]["error"],
        failures[0]["error_type"],
    )


async def failing(scheduler: Scheduler, job: Callable[[], Awaitable[None]], calls: list[int]) -> None:
    scheduler.every("rescan", 0.02, job)
    await eventually(lambda: len(calls) >= 2, message="a second tick after the failure")


def test_a_one_off_job_runs_at_its_time_or_at_once_if_that_has_passed() -> None:
    """at(): a token check before expiry; a time in the past means now."""
    ran: list[str] = []

    def job(name: str) -> Callable[[], Awaitable[None]]:
        async def record() -> None:
            ran.append(name)

        return record

    async def scenario(scheduler: Scheduler) -> None:
        scheduler.at("soon", time.time() + 0.05, job("soon"))
        scheduler.at("overdue", time.time() - 3600, job("overdue"))
        await eventually(lambda: len(ran) == 2)

    run(scenario)
    assert ["overdue", "soon"] == ran


def test_a_job_mid_way_at_shutdown_is_allowed_to_finish() -> None:
    """finish_running() gives a running job (a token refresh) its time after shutdown()."""
    progress: list[str] = []

    async def scenario(scheduler: Scheduler) -> None:
        release = asyncio.Event()
        begun = asyncio.Event()

        async def refresh() -> None:
            begun.set()
            await release.wait()
            progress.append("finished")

        scheduler.at("refresh", time.time(), refresh)
        await asyncio.wait_for(begun.wait(), DEADLINE)
        scheduler.shutdown()
        asyncio.get_running_loop().call_soon(release.set)
        await scheduler.finish_running(DEADLINE)

    run(scenario)
    assert ["finished"] == progress


def test_a_job_that_outlasts_the_shutdown_grace_is_cut_off() -> None:
    """finish_running(timeout) cancels what is still running after the timeout."""
    outcome: list[str] = []

    async def scenario(scheduler: Scheduler) -> None:
        begun = asyncio.Event()

        async def hang() -> None:
            begun.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                outcome.append("cancelled")
                raise

        scheduler.at("hang", time.time(), hang)
        await asyncio.wait_for(begun.wait(), DEADLINE)
        scheduler.shutdown()
        scheduler.shutdown()  # a second shutdown is harmless
        await scheduler.finish_running(0.02)
        await eventually(lambda: outcome)

    run(scenario)
    assert ["cancelled"] == outcome


def test_abort_running_cuts_off_a_running_job_now() -> None:
    """A second stop signal: running jobs are cancelled at once."""
    outcome: list[str] = []

    async def scenario(scheduler: Scheduler) -> None:
        begun = asyncio.Event()

        async def hang() -> None:
            begun.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                outcome.append("cancelled")
                raise

        scheduler.at("hang", time.time(), hang)
        await asyncio.wait_for(begun.wait(), DEADLINE)
        scheduler.abort_running()
        await eventually(lambda: outcome)
        await scheduler.finish_running(0.01)  # nothing left: returns at once

    run(scenario)
    assert ["cancelled"] == outcome


def test_a_removed_job_never_runs_again_and_removing_an_unknown_one_is_harmless() -> None:
    """remove(): a stopped target's jobs leave the shared scheduler; a job of another target stays."""
    ticks: list[str] = []

    def job(name: str) -> Callable[[], Awaitable[None]]:
        async def tick() -> None:
            ticks.append(name)

        return tick

    async def scenario(scheduler: Scheduler) -> None:
        scheduler.every("gone", 0.02, job("gone"))
        scheduler.every("stays", 0.02, job("stays"))
        await eventually(lambda: "gone" in ticks, message="a first tick")
        scheduler.remove("gone")
        scheduler.remove("never-added")
        seen = len(ticks)
        # Absence proven by order: "stays" ticks three more times, "gone" never again.
        await eventually(lambda: ticks[seen:].count("stays") >= 3, message="three more ticks")
        assert "gone" not in ticks[seen + 1 :]

    run(scenario)
