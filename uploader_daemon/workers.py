"""A target's worker pool: takes ready files, delivers them, decides what happens next.

``concurrency`` workers share one queue ordered by discovery. For each file:

- the file is opened once, without following symlinks, and checked against what was
  found ready; a file changed since waits to settle again, an unreadable one is logged
  once and tried again at the next rescan (no attempt counted);
- no valid credential and the login fails: the file waits (no attempt is counted) and
  the whole target pauses until the login backoff ends, so nothing is sent while
  unauthenticated;
- success: the ``after_upload`` action (see :mod:`uploader_daemon.outcomes`); a file
  written to while it was being sent is delivered again in its new version;
- 401: logged at error level, the token is discarded, the file is retried after a
  fresh login, through the backoff;
- transient failure: retried with exponential backoff and jitter (``Retry-After`` is a
  floor) until ``retry.attempts``, then moved to ``failed_dir`` with a sidecar;
- permanent failure: straight to ``failed_dir`` with a sidecar.

A worker survives any error (a bug, a full disk) and the file is retried; a worker
that dies anyway is logged and replaced. On stop, idle workers end at once and busy
ones get a bounded grace period; what is cut off goes back to pending in the journal.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import stat
from collections.abc import Callable

import httpx

from uploader_daemon.activity import ApiActivity
from uploader_daemon.auth.base import Credential
from uploader_daemon.backoff import backoff_delay
from uploader_daemon.clock import Clock
from uploader_daemon.config.schema import TargetSettings
from uploader_daemon.config.upload import ApiStep
from uploader_daemon.delivery.facts import file_facts
from uploader_daemon.delivery.run import Delivery, uses_sha256
from uploader_daemon.delivery.steps import StepContext
from uploader_daemon.drop_folder import DropFolder
from uploader_daemon.errors import (
    AuthRejectedError,
    DeliveryError,
    LoginFailedError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from uploader_daemon.file_moves import Identity, identity
from uploader_daemon.journal import FileRecord, Journal
from uploader_daemon.logs import get_logger
from uploader_daemon.outcomes import Outcomes, Verdict
from uploader_daemon.redaction import Redactor

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
        # Error messages can quote a server's answer, which may echo the token it was sent.
        self._redactor = redactor or Redactor()
        self._outcomes = Outcomes(target, journal, clock, self._redactor)
        self._folder = DropFolder(target)
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
        self._filing: set[int] = set()  # delivered, waiting only to retry the after_upload move
        self._filing_failures: dict[int, int] = {}
        self._unreadable: set[str] = set()  # warned once until readable
        self._workers: dict[asyncio.Task[None], int | None] = {}
        self._paused_until = 0.0
        self._stopping = False
        self._log = log.bind(target=target.name)
        self.on_changed: Callable[[str], None] = lambda relative_path: None

    # --- what the rest of the daemon calls -------------------------------------------

    def start(self) -> None:
        for _ in range(self._target.concurrency):
            self._spawn()

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
        """Whether any file is queued, backing off or in flight (keeps the token renewed).

        A delivered file waiting only for its archive move needs no API.
        """
        return len(self._scheduled) > len(self._filing)

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

    def _spawn(self) -> None:
        number = len(self._workers)
        task = asyncio.create_task(self._work(), name=f"{self._target.name}-worker-{number}")
        self._workers[task] = None
        task.add_done_callback(self._worker_ended)

    def _worker_ended(self, task: asyncio.Task[None]) -> None:
        """A worker may only end on stop; if one ends anyway, say so and replace it."""
        if self._stopping:
            return
        record_id = self._workers.pop(task, None)
        reason = "cancelled" if task.cancelled() else str(task.exception())
        self._log.critical(
            "worker_died", error=reason, action="starting a replacement; please report this with the log"
        )
        if record_id is not None:
            self._later(record_id, self._scheduled.get(record_id, ""), self._target.retry.backoff)
        self._spawn()

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
                # The record stays attached to this task, so _worker_ended can requeue it.
                with contextlib.suppress(Exception):
                    self._journal.interrupted(record_id, self._clock.now())
                raise
            except Exception as error:  # a bug, a full disk: the worker and the file survive
                self._log.error("worker_error", error=str(error), error_type=type(error).__name__)
                self._log.debug("worker_traceback", exc_info=True)
                await self._after_internal_error(record_id, error)
            self._workers[current] = None

    async def _process(self, record_id: int) -> None:
        record = self._journal.get(record_id)
        if record.state == "delivered":
            await self._file_away(record)
            return
        if record.state == "uploading":
            # Never in flight twice in one process: an attempt whose bookkeeping failed
            # (the journal's disk was full) left it so. Go again, from its checkpoint.
            self._journal.interrupted(record.id, self._clock.now())
            record = self._journal.get(record_id)
        if record.state != "pending":
            self._unschedule(record_id)
            return
        opened = self._open(record)
        if opened is None:
            return
        descriptor, info = opened
        try:
            if self._needs_login:
                try:
                    await self._credential.headers()
                except LoginFailedError as error:
                    self._wait_for_login(record, error)
                    return
            await self._deliver(record, descriptor, info)
        finally:
            os.close(descriptor)

    def _open(self, record: FileRecord) -> tuple[int, os.stat_result] | None:
        """Open the file to deliver, or deal with why it cannot be; ``None`` then.

        One descriptor, opened without following symlinks, serves the whole delivery:
        what was checked here is what is sent.
        """
        bound = self._log.bind(file=record.path)
        try:
            descriptor = self._folder.open(record.path)
        except FileNotFoundError:
            self._forget(record, "file_vanished", "removed from the drop folder before delivery")
            return None
        except PermissionError:
            self._unschedule(record.id)
            if record.path not in self._unreadable:
                self._unreadable.add(record.path)
                bound.warning(
                    "file_unreadable",
                    hint="the daemon's user cannot read it: fix its mode or group; it is tried "
                    "again at the next rescan",
                )
            return None
        except OSError as error:
            if error.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            self._forget(record, "symlink_skipped", "it or a folder on its way became a symlink")
            return None
        self._unreadable.discard(record.path)
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            os.close(descriptor)
            self._forget(record, "file_skipped", "no longer a regular file")
            return None
        if (info.st_size, info.st_mtime_ns) != (record.size, record.mtime_ns):
            # Written to again since it was found ready: wait until it settles anew.
            os.close(descriptor)
            self._unschedule(record.id)
            bound.info("file_changed_before_upload", action="waiting for it to settle again")
            self.on_changed(record.path)
            return None
        return descriptor, info

    async def _deliver(self, record: FileRecord, descriptor: int, opened: os.stat_result) -> None:
        path = self._target.folder / record.path
        facts = await file_facts(
            path, record.path, descriptor=descriptor, size=opened.st_size, with_sha256=self._needs_sha256
        )
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

        bound = self._log.bind(file=record.path)
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
            await self._retry(record, error, logged=True, sent=identity(opened))
            return
        except PermanentDeliveryError as error:
            await self._give_up(record, error, attempts=record.attempts + 1, sent=identity(opened))
            return
        except DeliveryError as error:
            await self._retry(record, error, sent=identity(opened))
            return
        # The journal says "delivered" from here on (the last step's checkpoint).
        self._activity.touch()
        after = os.fstat(descriptor)
        if (after.st_size, after.st_mtime_ns) != (opened.st_size, opened.st_mtime_ns):
            self._journal.done(record.id, "changed", self._clock.now())
            self._unschedule(record.id)
            bound.warning(
                "file_changed_during_upload",
                action="it was written to while being sent; the new version will be sent too",
            )
            self.on_changed(record.path)
            return
        await self._file_away(record, duration=self._clock.now() - started, sent=identity(opened))

    # --- outcomes --------------------------------------------------------------------

    async def _file_away(
        self, record: FileRecord, duration: float | None = None, sent: Identity | None = None
    ) -> None:
        verdict = await self._outcomes.file_away(record, duration, sent)
        if verdict is Verdict.RETRY:
            self._retry_filing(record)
            return
        self._unschedule(record.id)
        if verdict is Verdict.REPLACED:
            self.on_changed(record.path)

    async def _retry(
        self, record: FileRecord, error: DeliveryError, *, logged: bool = False, sent: Identity | None = None
    ) -> None:
        message = self._redactor.scrub(error.message)
        attempts = self._journal.retry_later(record.id, message, error.status, self._clock.now())
        if attempts >= self._target.retry.attempts:
            await self._give_up(self._journal.get(record.id), error, attempts=attempts, sent=sent)
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
                error=message,
                attempt=attempts,
                attempts_left=self._target.retry.attempts - attempts,
                retry_in=round(delay, 1),
            )
        self._later(record.id, record.path, delay)

    async def _give_up(
        self, record: FileRecord, error: DeliveryError, *, attempts: int, sent: Identity | None = None
    ) -> None:
        verdict = await self._outcomes.give_up(record, error, attempts, sent)
        self._unschedule(record.id)
        if verdict is Verdict.REPLACED:
            self.on_changed(record.path)

    async def _after_internal_error(self, record_id: int, error: Exception) -> None:
        """Retry after an unexpected error, without ever raising (the journal may be the cause)."""
        filing = record_id in self._filing
        try:
            record = self._journal.get(record_id)
            filing = record.state == "delivered"
            if filing:
                self._retry_filing(record)
            elif record.state in ("pending", "uploading"):
                await self._retry(record, TransientDeliveryError(f"internal error: {error}"))
        except Exception as second:
            self._log.error(
                "worker_recovery_failed",
                error=str(second),
                action=f"trying the file again in {self._target.retry.max_backoff:g}s",
            )
            path = self._scheduled.get(record_id, "")
            self._later(record_id, path, self._target.retry.max_backoff, filing=filing)

    def _retry_filing(self, record: FileRecord) -> None:
        """Try the after_upload action again later, backing off per record."""
        failures = self._filing_failures.get(record.id, 0) + 1
        delay = backoff_delay(failures, self._target.retry.backoff, self._target.retry.max_backoff)
        self._later(record.id, record.path, delay, filing=True)
        self._filing_failures[record.id] = failures

    def _forget(self, record: FileRecord, event: str, reason: str) -> None:
        self._journal.gone(record.id, self._clock.now())
        self._unschedule(record.id)
        self._log.warning(event, file=record.path, reason=reason)

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

    def _later(self, record_id: int, relative_path: str, delay: float, *, filing: bool = False) -> None:
        if filing:
            self._filing.add(record_id)
        self._scheduled[record_id] = relative_path
        self._scheduled_paths.add(relative_path)
        loop = asyncio.get_running_loop()
        self._timers[record_id] = loop.call_later(delay, self._enqueue, record_id, relative_path)

    def _unschedule(self, record_id: int) -> None:
        self._filing.discard(record_id)
        self._filing_failures.pop(record_id, None)
        path = self._scheduled.pop(record_id, None)
        if path is not None:
            self._scheduled_paths.discard(path)
        timer = self._timers.pop(record_id, None)
        if timer is not None:
            timer.cancel()
