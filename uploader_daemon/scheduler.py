"""Timed jobs, run by APScheduler on the daemon's event loop.

Per target: the token check every ``auth.refresh.check_every``, a one-off check
``before_expiry`` ahead of each token's expiry (a fixed interval alone could wake up
just after the token died), and the folder rescan every ``watch.rescan_every``. Daily:
pruning old journal rows. Jobs are plain coroutine functions that never raise; the
scheduler only decides when they run.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from collections.abc import Awaitable, Callable

from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from uploader_daemon.logs import get_logger

log = get_logger(__name__)

Job = Callable[[], Awaitable[object]]


class Scheduler:
    """A thin, typed face over APScheduler's ``AsyncIOScheduler``."""

    def __init__(self) -> None:
        self._running: set[asyncio.Task[None]] = set()
        self._scheduler = AsyncIOScheduler(
            timezone=datetime.UTC,
            job_defaults={
                # A tick missed while the machine slept runs once, late, not N times.
                "coalesce": True,
                "max_instances": 1,
                "misfire_grace_time": 3600,
            },
        )

    def start(self) -> None:
        """Start on the running event loop."""
        self._scheduler.start()

    def shutdown(self) -> None:
        """Stop scheduling; jobs already running go on (see :meth:`finish_running`)."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    async def finish_running(self, timeout: float) -> None:
        """Let jobs that are mid-way (a token refresh) complete, for at most ``timeout``;
        then cut off what is left."""
        if self._running:
            _, late = await asyncio.wait(list(self._running), timeout=timeout)
            for task in late:
                task.cancel()

    def abort_running(self) -> None:
        """Cut off jobs that are mid-way now (a second stop signal)."""
        for task in self._running:
            task.cancel()

    def every(self, job_id: str, seconds: float, job: Job) -> None:
        """Run ``job`` every ``seconds``, first one interval from now."""
        self._scheduler.add_job(
            self._guarded(job_id, job), "interval", seconds=seconds, id=job_id, replace_existing=True
        )

    def remove(self, job_id: str) -> None:
        """Take a job off the schedule (a job that ran or was never added: nothing to do)."""
        with contextlib.suppress(JobLookupError):
            self._scheduler.remove_job(job_id)

    def at(self, job_id: str, when: float, job: Job) -> None:
        """Run ``job`` once at wall time ``when`` (at once if that has passed)."""
        moment = datetime.datetime.fromtimestamp(when, datetime.UTC)
        now = datetime.datetime.now(datetime.UTC)
        self._scheduler.add_job(
            self._guarded(job_id, job), "date", run_date=max(moment, now), id=job_id, replace_existing=True
        )

    def _guarded(self, job_id: str, job: Job) -> Callable[[], Awaitable[None]]:
        """Wrap a job so that an exception is logged and the next tick still comes.

        The job runs as a task of its own: APScheduler's shutdown cancels the jobs it is
        running, which would cut a token refresh off mid-request (and log the
        cancellation as an error with a traceback). Shielded, the job goes on, and
        :meth:`finish_running` gives it the shutdown grace period.
        """

        async def run() -> None:
            work = asyncio.ensure_future(self._logged(job_id, job))
            self._running.add(work)
            work.add_done_callback(self._running.discard)
            try:
                await asyncio.shield(work)
            except asyncio.CancelledError:
                if work.done():
                    raise
                # The scheduler is shutting down; finish_running() now owns the job.

        return run

    @staticmethod
    async def _logged(job_id: str, job: Job) -> None:
        try:
            await job()
        except Exception as error:
            log.error("scheduled_job_failed", job=job_id, error=str(error), error_type=type(error).__name__)
            log.debug("scheduled_job_traceback", job=job_id, exc_info=True)
