"""A target's worker pool: takes ready files, delivers them, decides what happens next.

``concurrency`` workers share one queue ordered by discovery. For each file:

- no valid credential and the login fails: the file waits (no attempt is counted) and
  the whole target pauses until the login backoff ends, so nothing is sent while
  unauthenticated;
- success: the ``after_upload`` action (archive / delete / keep), then ``done``;
- 401: logged at error level, the token is discarded, the file is retried after a
  fresh login, through the backoff;
- transient failure: retried with exponential backoff and jitter (``Retry-After`` is a
  floor) until ``retry.attempts``, then moved to ``failed_dir`` with a sidecar;
- permanent failure: straight to ``failed_dir`` with a sidecar.

On stop, idle workers end at once and busy ones get a bounded grace period; what is cut
off goes back to pending in the journal.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from uploader_daemon.activity import ApiActivity
from uploader_daemon.auth.base import Credential
from uploader_daemon.backoff import backoff_delay
from uploader_daemon.clock import Clock
from uploader_daemon.config.schema import TargetSettings
from uploader_daemon.config.upload import ApiStep
from uploader_daemon.delivery.facts import FileFacts, file_facts
from uploader_daemon.delivery.run import Delivery, uses_sha256
from uploader_daemon.delivery.steps import StepContext
from uploader_daemon.errors import (
    AuthRejectedError,
    DeliveryError,
    LoginFailedError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from uploader_daemon.file_moves import CopyNeededError, archive, fail
from uploader_daemon.journal import FileRecord, Journal
from uploader_daemon.logs import Redactor, get_logger

log = get_logger(__name__)


class TargetWorkers:
    """Delivers one target's files with at most ``concurrency`` in flight."""

    def __init__(
        self,
        *,
        target: TargetSettings,
        journal: Journal,
        clock: Clock,
        credential: Credential,
        activity: ApiActivity,
        client: httpx.AsyncClient,
        redactor: Redactor | None = None,
    ) -> None:
        self._target = target
        # The sidecar quotes the server's answer, which may echo the token it was sent.
        self._redactor = redactor or Redactor()
        self._journal = journal
        self._clock = clock
        self._credential = credential
        self._activity = activity
        self._client = client
        self._delivery = Delivery(target.steps, journal, clock)
        self._needs_sha256 = uses_sha256(target.steps)
        self._needs_login = any(isinstance(step, ApiStep) and step.credential for step in target.steps)
        self._queue: asyncio.PriorityQueue[int] = asyncio.PriorityQueue()
        self._scheduled: dict[int, str] = {}  # queued, waiting on a timer, or in flight
        self._scheduled_paths: set[str] = set()
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._workers: dict[asyncio.Task[None], int | None] = {}
        self._paused_until = 0.0
        self._stopping = False
        self._log = log.bind(target=target.name)
        self.on_changed: Callable[[str], None] = lambda relative_path: None

    # --- what the rest of the daemon calls -------------------------------------------

    def start(self) -> None:
        for number in range(self._target.concurrency):
            task = asyncio.create_task(self._work(), name=f"{self._target.name}-worker-{number}")
            self._workers[task] = None

    def resume_unfinished(self) -> int:
        """Queue what the journal says is unfinished (after a restart); returns how many."""
        records = self._journal.unfinished(self._target.name)
        for record in records:
            self._enqueue(record.id, record.path)
        if records:
            self._log.info("unfinished_files_resumed", files=len(records))
        return len(records)

    def offer(self, relative_path: str) -> None:
        """A file is ready in the drop folder: journal it and queue it, unless known."""
        if self._stopping:
            return
        try:
            info = (self._target.folder / relative_path).lstat()
        except FileNotFoundError:
            return
        if not stat.S_ISREG(info.st_mode):
            return
        record = self._journal.admit(
            self._target.name, relative_path, info.st_size, info.st_mtime_ns, self._clock.now()
        )
        if record is None or record.id in self._scheduled:
            return
        # Debug: at info, file_delivered (or a warning) is the one line per file.
        self._log.debug("file_queued", file=relative_path, size=info.st_size)
        self._enqueue(record.id, relative_path)

    def is_scheduled(self, relative_path: str) -> bool:
        return relative_path in self._scheduled_paths

    def files_waiting(self) -> bool:
        """Whether any file is queued, backing off or in flight (keeps the token renewed)."""
        return bool(self._scheduled)

    async def stop(self, grace: float) -> None:
        """Stop taking files; give in-flight deliveries ``grace`` seconds, then cut them off."""
        self._stopping = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        busy = [task for task, record_id in self._workers.items() if record_id is not None]
        for task in self._workers:
            if task not in busy:
                task.cancel()
        if busy:
            self._log.info("waiting_for_uploads", files=len(busy), grace=grace)
            _, late = await asyncio.wait(busy, timeout=grace)
            for task in late:
                record_id = self._workers.get(task)
                self._log.warning(
                    "upload_abandoned",
                    file=self._scheduled.get(record_id) if record_id else None,
                    reason="shutdown grace period over; it stays pending for the next start",
                )
                task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers.clear()

    def abort(self) -> None:
        """Cancel every worker now; interrupted files go back to pending."""
        for task in self._workers:
            task.cancel()

    # --- the workers -----------------------------------------------------------------

    async def _work(self) -> None:
        current = asyncio.current_task()
        assert current is not None
        while not self._stopping:
            pause = self._paused_until - self._clock.now()
            if pause > 0:
                await asyncio.sleep(pause)
            record_id = await self._queue.get()
            self._workers[current] = record_id
            try:
                await self._process(record_id)
            except asyncio.CancelledError:
                self._journal.interrupted(record_id, self._clock.now())
                raise
            except Exception as error:  # a bug must not kill the worker or lose the file
                self._log.error("worker_error", error=str(error), error_type=type(error).__name__)
                self._log.debug("worker_traceback", exc_info=True)
                self._after_internal_error(record_id, error)
            finally:
                self._workers[current] = None

    async def _process(self, record_id: int) -> None:
        record = self._journal.get(record_id)
        if record.state == "delivered":
            await self._file_away(record)
            return
        if record.state != "pending":
            self._unschedule(record_id)
            return
        bound = self._log.bind(file=record.path)
        path = self._target.folder / record.path
        try:
            info = path.lstat()
        except FileNotFoundError:
            self._journal.gone(record_id, self._clock.now())
            self._unschedule(record_id)
            bound.warning("file_vanished", reason="removed from the drop folder before delivery")
            return
        if (info.st_size, info.st_mtime_ns) != (record.size, record.mtime_ns):
            # Written to again since it was found ready: wait until it settles anew.
            self._unschedule(record_id)
            bound.info("file_changed_before_upload", action="waiting for it to settle again")
            self.on_changed(record.path)
            return
        if self._needs_login:
            try:
                await self._credential.headers()
            except LoginFailedError as error:
                self._wait_for_login(record, error)
                return
        await self._deliver(record, path)

    async def _deliver(self, record: FileRecord, path: Path) -> None:
        bound = self._log.bind(file=record.path)
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            facts = await file_facts(
                path, record.path, descriptor=descriptor, size=record.size, with_sha256=self._needs_sha256
            )
            await self._deliver_open(record, facts)
        finally:
            os.close(descriptor)

    async def _deliver_open(self, record: FileRecord, facts: FileFacts) -> None:
        bound = self._log.bind(file=record.path)
        target_values = {"name": self._target.name}

        def context(outputs: dict[str, object]) -> StepContext:
            values = {"file": facts.template_values(), "target": target_values, **outputs}
            return StepContext(
                client=self._client,
                base_url=self._target.api.base_url,
                origin=self._target.api.origin,
                credential=self._credential,
                activity=self._activity,
                file=facts,
                values=values,
            )

        started = self._clock.now()
        bound.debug("delivery_started", attempt=record.attempts + 1, size=facts.size)
        try:
            await self._delivery.run(record, context)
        except LoginFailedError as error:
            self._journal.requeue(record.id, self._clock.now(), error="waiting for a successful login")
            self._wait_for_login(record, error)
            return
        except AuthRejectedError as error:
            bound.error(
                "upload_unauthorized",
                status=401,
                step=error.step,
                attempt=record.attempts + 1,
                action="token discarded; retrying after a fresh login",
            )
            self._retry(record, error, logged=True)
            return
        except PermanentDeliveryError as error:
            self._give_up(record, error, attempts=record.attempts + 1)
            return
        except DeliveryError as error:
            self._retry(record, error)
            return
        # The journal says "delivered" from here on (the last step's checkpoint).
        self._activity.touch()
        await self._file_away(record, duration=self._clock.now() - started)

    # --- outcomes --------------------------------------------------------------------

    async def _file_away(self, record: FileRecord, duration: float | None = None) -> None:
        """Apply ``after_upload`` to a delivered file; the file is never sent again."""
        action = self._target.after_upload
        path = self._target.folder / record.path
        destination: str | None = None
        try:
            if action.action == "archive":
                assert action.archive_dir is not None
                destination = str(await self._archive(path, action.archive_dir, record.path))
            elif action.action == "delete":
                path.unlink()
                destination = "deleted"
        except FileNotFoundError:
            destination = "vanished"
        except OSError as error:
            delay = backoff_delay(1, self._target.retry.backoff, self._target.retry.max_backoff)
            self._log.error(
                "after_upload_failed",
                file=record.path,
                action=action.action,
                error=str(error),
                hint="the file was delivered and will not be sent again; fix the folder permissions",
                retry_in=round(delay, 1),
            )
            self._later(record.id, record.path, delay)
            return
        self._journal.done(record.id, destination, self._clock.now())
        self._unschedule(record.id)
        self._log.info(
            "file_delivered",
            file=record.path,
            size=record.size,
            after_upload=action.action,
            destination=destination,
            seconds=round(duration, 3) if duration is not None else None,
        )

    @staticmethod
    async def _archive(path: Path, archive_dir: Path, relative_path: str) -> Path:
        """Archive with a hard link on the loop (microseconds); a copy goes to a thread."""
        try:
            return archive(path, archive_dir, relative_path, allow_copy=False)
        except CopyNeededError:
            return await asyncio.to_thread(archive, path, archive_dir, relative_path)

    def _retry(self, record: FileRecord, error: DeliveryError, *, logged: bool = False) -> None:
        attempts = self._journal.retry_later(record.id, error.message, error.status, self._clock.now())
        if attempts >= self._target.retry.attempts:
            self._give_up(self._journal.get(record.id), error, attempts=attempts)
            return
        retry_after = error.retry_after if isinstance(error, TransientDeliveryError) else None
        delay = backoff_delay(
            attempts, self._target.retry.backoff, self._target.retry.max_backoff, retry_after=retry_after
        )
        if not logged:
            self._log.warning(
                "delivery_failed",
                file=record.path,
                step=error.step,
                status=error.status,
                error=error.message,
                attempt=attempts,
                attempts_left=self._target.retry.attempts - attempts,
                retry_in=round(delay, 1),
            )
        self._later(record.id, record.path, delay)

    def _give_up(self, record: FileRecord, error: DeliveryError, *, attempts: int) -> None:
        now = self._clock.now()
        report: dict[str, Any] = {
            "target": self._target.name,
            "file": record.path,
            "failed_at": datetime.datetime.fromtimestamp(now, datetime.UTC).isoformat(timespec="seconds"),
            "attempts": attempts,
            "step": error.step,
            "status": error.status,
            "error": error.message,
            "body_excerpt": error.body_excerpt,
            "details": getattr(error, "details", None),
        }
        report = dict(self._redactor(None, "sidecar", report))
        source = self._target.folder / record.path
        try:
            destination: str | None = str(fail(source, self._target.failed_dir, record.path, report))
        except FileNotFoundError:
            destination = "vanished"
        except OSError as move_error:
            destination = None
            self._log.error(
                "failed_dir_unusable",
                file=record.path,
                error=str(move_error),
                hint="the file stays in the drop folder and will not be retried until it changes",
            )
        self._journal.failed(record.id, error.message, error.status, destination, now)
        self._unschedule(record.id)
        self._log.error(
            "file_failed",
            file=record.path,
            step=error.step,
            status=error.status,
            error=error.message,
            attempts=attempts,
            destination=destination,
        )

    def _after_internal_error(self, record_id: int, error: Exception) -> None:
        record = self._journal.get(record_id)
        if record.state == "delivered":
            self._later(record_id, record.path, self._target.retry.backoff)
        elif record.state in ("pending", "uploading"):
            self._retry(record, TransientDeliveryError(f"internal error: {error}"))

    def _wait_for_login(self, record: FileRecord, error: LoginFailedError) -> None:
        """Pause the whole target until the login backoff ends; the file waits uncounted."""
        self._paused_until = max(self._paused_until, error.retry_at)
        self._later(record.id, record.path, max(0.0, error.retry_at - self._clock.now()))

    # --- queue bookkeeping -----------------------------------------------------------

    def _enqueue(self, record_id: int, relative_path: str) -> None:
        self._timers.pop(record_id, None)
        if self._stopping:
            return
        self._scheduled[record_id] = relative_path
        self._scheduled_paths.add(relative_path)
        self._queue.put_nowait(record_id)

    def _later(self, record_id: int, relative_path: str, delay: float) -> None:
        self._scheduled[record_id] = relative_path
        self._scheduled_paths.add(relative_path)
        loop = asyncio.get_running_loop()
        self._timers[record_id] = loop.call_later(delay, self._enqueue, record_id, relative_path)

    def _unschedule(self, record_id: int) -> None:
        path = self._scheduled.pop(record_id, None)
        if path is not None:
            self._scheduled_paths.discard(path)
        timer = self._timers.pop(record_id, None)
        if timer is not None:
            timer.cancel()
