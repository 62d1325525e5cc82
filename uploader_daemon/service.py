"""One configured target, wired: every object it runs on is built here and passed down.

::

    FolderWatcher ──> ReadinessTracker ──> Intake ──> Journal
         ^                                   │
         │ resettle                          v
    WorkerPool ──────────> ApiGate ────> Schedule
         │──> Execution ──> Delivery ──> steps ──> httpx (CredentialAuth)
         └──> Outcomes  ──> file_moves, Journal

No object reaches up to the one that owns it: what a lower object needs from a
higher one (the watcher's "settle this file again") is passed down as an interface.
"""

from __future__ import annotations

import time
from pathlib import Path

import structlog

from uploader_daemon.activity import ApiActivity
from uploader_daemon.auth import CredentialAuth, build_credential
from uploader_daemon.auth.base import Job
from uploader_daemon.clock import Clock
from uploader_daemon.config.schema import TargetSettings
from uploader_daemon.delivery.run import Delivery
from uploader_daemon.drop_folder import DropFolder
from uploader_daemon.errors import StateDirError
from uploader_daemon.hooks import TargetHooks
from uploader_daemon.http import build_client
from uploader_daemon.journal import Journal
from uploader_daemon.logs import get_logger
from uploader_daemon.monitor import QUIET, Fanout, Listener
from uploader_daemon.pool.execution import Execution
from uploader_daemon.pool.gate import ApiGate
from uploader_daemon.pool.intake import Intake
from uploader_daemon.pool.outcomes import Outcomes
from uploader_daemon.pool.schedule import Schedule
from uploader_daemon.pool.workers import WorkerPool
from uploader_daemon.present import TargetSnapshot
from uploader_daemon.redaction import Redactor
from uploader_daemon.scheduler import Scheduler
from uploader_daemon.watcher import FolderWatcher

log = get_logger(__name__)


class TargetService:
    """Everything that runs for one target, started and stopped together."""

    def __init__(
        self,
        settings: TargetSettings,
        *,
        journal: Journal,
        scheduler: Scheduler,
        tokens_dir: Path,
        clock: Clock,
        redactor: Redactor,
        owner: str,
        listener: Listener = QUIET,
    ) -> None:
        self.settings = settings
        self._journal = journal
        self._watching = False
        # Every job this target schedules goes through here, so stopping it (a reload
        # that removes or changes it) can take them all off the shared scheduler.
        self._scheduler = _TargetJobs(scheduler)
        self.hooks = TargetHooks(settings, clock)
        if self.hooks.configured:
            listener = Fanout([listener, self.hooks])
        events = listener.target(settings.name)
        self.schedule = Schedule()
        self.gate = ApiGate(settings.name, settings.retry, self.schedule, clock, events)
        self.client = build_client(settings.api, settings.concurrency)
        self.activity = ApiActivity(clock, self.schedule.files_waiting)
        self.credential = build_credential(
            settings,
            client=self.client,
            clock=clock,
            activity=self.activity,
            tokens_dir=tokens_dir,
            redactor=redactor,
            timer=self._scheduler,
            events=events,
        )
        folder = DropFolder(settings)
        api = settings.api
        idempotency_header = api.idempotency_header if api.idempotency_key else None
        self.intake = Intake(settings, journal, self.schedule, clock)
        self.watcher = FolderWatcher(
            settings, offer=self.intake.offer, already_handled=self.intake.known, folder=folder
        )
        self.workers = WorkerPool(
            target=settings,
            schedule=self.schedule,
            journal=journal,
            execution=Execution(
                target=settings,
                delivery=Delivery(settings.steps, journal, clock, idempotency_header=idempotency_header),
                folder=folder,
                client=self.client,
                auth=CredentialAuth(self.credential, settings.api.origin, self.activity),
                credential=self.credential,
                clock=clock,
                events=events,
            ),
            outcomes=Outcomes(settings, journal, clock, redactor, events),
            gate=self.gate,
            resettle=self.watcher,
            clock=clock,
            owner=owner,
        )

    async def start(self) -> None:
        """Create output folders, pick up where the last run stopped, start watching."""
        name = self.settings.name
        for key, folder in self.settings.output_folders.items():
            # Only the last component: a missing parent is a typo (the config check says so).
            try:
                folder.mkdir()
            except FileExistsError:
                continue
            except OSError as error:
                raise StateDirError(
                    f"target {name}: cannot create {key} {folder}: {error.strerror}; create it for the "
                    "daemon's user"
                ) from None
            log.info("folder_created", target=name, key=key, folder=str(folder))
        if not self.settings.api.verify_tls:
            log.warning(
                "tls_verification_off",
                target=name,
                base_url=self.settings.api.base_url,
                hint="api.verify_tls is false: anyone on the network path can read the credential "
                "and the files; use ca_file for a private CA instead",
            )
        self.credential.start()
        # The workers' tasks copy this context: every line they log (a progress line from
        # deep inside a step included) names the target.
        with structlog.contextvars.bound_contextvars(target=name):
            self.workers.start()
        await self.intake.resume_unfinished()
        # Watch first, then scan: a file arriving in between is seen by both, never by none.
        self.watcher.start()
        started = time.monotonic()
        found = await self.watcher.scan()
        log.info(
            "watching",
            target=name,
            folder=str(self.settings.folder),
            files_found=found,
            recursive=self.settings.recursive,
            mode="poll" if self.settings.watch.poll else "events",
            scan_ms=round((time.monotonic() - started) * 1000, 1),
        )
        self._scheduler.every(f"{name}:rescan", self.settings.watch.rescan_every, self.watcher.scan)
        if (takeover_every := self._journal.takeover_every) is not None:
            # A shared journal: work another daemon of the group left behind comes here too.
            self._scheduler.every(f"{name}:takeover", takeover_every, self.intake.take_over)
        self._watching = True

    def snapshot(self) -> TargetSnapshot:
        """What this target is doing now, read from memory (metrics, ``STATUS=``, ``status``)."""
        scheduled, in_flight = self.schedule.counts()
        return TargetSnapshot(
            name=self.settings.name,
            scheduled=scheduled,
            in_flight=in_flight,
            watching=self._watching and self.watcher.watching,
            token_expires_at=self.credential.expires_at,
            logs_in=self.settings.auth.type in ("token", "cognito"),
            api_down_since=self.gate.down_since,
            api_down_reason=self.gate.reason if self.gate.down else None,
        )

    async def stop_watching(self) -> None:
        self._watching = False
        await self.watcher.stop()
        await self.intake.stop()

    async def stop(self, grace: float) -> None:
        """Stop workers (in-flight uploads get ``grace`` seconds), then the hooks they started."""
        self._scheduler.cancel_all()
        await self.workers.stop(grace)
        await self.hooks.close(grace)

    async def close(self) -> None:
        """Close the HTTP client (after :meth:`stop`, and after scheduled jobs ended)."""
        await self.client.aclose()

    def abort(self) -> None:
        """Cut off in-flight uploads now (a second stop signal)."""
        self.workers.abort()
        self.hooks.abort()


class _TargetJobs:
    """The shared scheduler as one target sees it: what it schedules can be taken back."""

    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler
        self._job_ids: set[str] = set()
        self._cancelled = False

    def every(self, job_id: str, seconds: float, job: Job) -> None:
        if not self._cancelled:
            self._job_ids.add(job_id)
            self._scheduler.every(job_id, seconds, job)

    def at(self, job_id: str, when: float, job: Job) -> None:
        if not self._cancelled:
            self._job_ids.add(job_id)
            self._scheduler.at(job_id, when, job)

    def cancel_all(self) -> None:
        """Take every job of this target off the shared scheduler; schedule nothing more."""
        self._cancelled = True
        for job_id in self._job_ids:
            self._scheduler.remove(job_id)
        self._job_ids.clear()
