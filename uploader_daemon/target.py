"""One configured target, wired: HTTP client, credential, workers, watcher, jobs."""

from __future__ import annotations

import time
from pathlib import Path

from uploader_daemon.activity import ApiActivity
from uploader_daemon.auth import ManagedTokenCredential, build_credential
from uploader_daemon.clock import Clock
from uploader_daemon.config.schema import TargetSettings
from uploader_daemon.errors import StateDirError
from uploader_daemon.http import build_client
from uploader_daemon.journal import Journal
from uploader_daemon.logs import get_logger
from uploader_daemon.readiness import Snapshot
from uploader_daemon.redaction import Redactor
from uploader_daemon.scheduler import Scheduler
from uploader_daemon.watcher import FolderWatcher
from uploader_daemon.workers import TargetWorkers

log = get_logger(__name__)


class TargetService:
    """Everything that runs for one target, started and stopped together."""

    def __init__(
        self,
        settings: TargetSettings,
        *,
        journal: Journal,
        tokens_dir: Path,
        clock: Clock,
        redactor: Redactor,
    ) -> None:
        self.settings = settings
        self._journal = journal
        self.client = build_client(settings.api, settings.concurrency)
        self.activity = ApiActivity(clock)
        self.credential = build_credential(
            settings,
            client=self.client,
            clock=clock,
            activity=self.activity,
            tokens_dir=tokens_dir,
            redactor=redactor,
        )
        self.workers = TargetWorkers(
            target=settings,
            journal=journal,
            clock=clock,
            credential=self.credential,
            activity=self.activity,
            client=self.client,
            redactor=redactor,
        )
        self.activity.watch_queue(self.workers.files_waiting)
        self.watcher = FolderWatcher(
            settings, offer=self.workers.offer, already_handled=self._already_handled
        )
        self.workers.on_changed = self.watcher.resettle

    async def start(self, scheduler: Scheduler) -> None:
        """Create output folders, pick up where the last run stopped, start watching."""
        name = self.settings.name
        for key, folder in self.settings.output_folders.items():
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise StateDirError(
                    f"target {name}: cannot create {key} {folder}: {error.strerror}; create it for the "
                    "daemon's user"
                ) from None
        credential = self.credential
        if isinstance(credential, ManagedTokenCredential):
            credential.on_new_token(
                lambda when: scheduler.at(f"{name}:token-due", when, credential.renew_if_due)
            )
        credential.restore()
        if credential.check_every is not None:
            scheduler.every(f"{name}:token-check", credential.check_every, credential.renew_if_due)
        self.workers.start()
        self.workers.resume_unfinished()
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
        scheduler.every(f"{name}:rescan", self.settings.watch.rescan_every, self.watcher.scan)

    async def stop_watching(self) -> None:
        await self.watcher.stop()

    async def stop(self, grace: float) -> None:
        """Stop workers (in-flight uploads get ``grace`` seconds)."""
        await self.workers.stop(grace)

    async def close(self) -> None:
        """Close the HTTP client (after :meth:`stop`, and after scheduled jobs ended)."""
        await self.client.aclose()

    def abort(self) -> None:
        """Cut off in-flight uploads now (a second stop signal)."""
        self.workers.abort()

    def _already_handled(self, relative_path: str, snapshot: Snapshot) -> bool:
        if self.workers.is_scheduled(relative_path):
            return True
        return self._journal.was_settled(self.settings.name, relative_path, *snapshot)
