"""A target's worker pool: ``concurrency`` workers take files from the schedule and deliver them.

For each file a worker claims its journal row, has the delivery executed
(:mod:`.execution`), and acts on how it ended:

- delivered: filed away (:mod:`.outcomes`); a file written to while it was being sent
  is delivered again in its new version;
- no valid credential and the login fails, or the API does not answer (an outage, see
  :mod:`.gate`): the file goes back to pending without using an attempt, and the whole
  target holds its files, probing with one at a time, so nothing is sent while
  unauthenticated and nothing is blamed for an outage;
- a failure: retried after a backoff, or given up on (see :mod:`.outcomes`);
- changed since it was found ready: it waits to settle again; unreadable: logged once,
  tried again at the next rescan; gone: forgotten.

A worker survives any error (a bug, a full disk) and the file is retried; a worker that
dies anyway is logged and replaced. On stop, idle workers end at once and busy ones get
a bounded grace period; what is cut off goes back to pending in the journal.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

from uploader_daemon.backoff import backoff_delay
from uploader_daemon.clock import Clock
from uploader_daemon.config.schema import TargetSettings
from uploader_daemon.errors import (
    ApiUnavailableError,
    JournalUnavailableError,
    LoginFailedError,
    TransientDeliveryError,
)
from uploader_daemon.journal import Claim, FileState, Journal, LeaseLostError
from uploader_daemon.logs import get_logger
from uploader_daemon.pool.execution import Attempt, Ending, Execution
from uploader_daemon.pool.gate import ApiGate
from uploader_daemon.pool.outcomes import Outcomes, Verdict
from uploader_daemon.pool.schedule import Schedule, ScheduleClosedError

log = get_logger(__name__)

# While a shared journal's database does not answer, a file is tried again this often
# (the journal logs the outage once; a claim it held is given up at its lease deadline).
_JOURNAL_RETRY_SECONDS = 2.0
_NO_REQUEST = frozenset(
    {Ending.CHANGED_BEFORE, Ending.UNREADABLE, Ending.VANISHED, Ending.SYMLINK, Ending.NOT_REGULAR}
)
_GONE_REASONS = {
    Ending.VANISHED: ("file_vanished", "removed from the drop folder before delivery"),
    Ending.SYMLINK: ("symlink_skipped", "it or a folder on its way became a symlink"),
    Ending.NOT_REGULAR: ("file_skipped", "no longer a regular file"),
}


class Resettle(Protocol):
    """Where a file that changed goes to settle again (the target's watcher)."""

    def resettle(self, relative_path: str) -> None: ...


class WorkerPool:
    """Delivers one target's files with at most ``concurrency`` in flight."""

    def __init__(
        self,
        *,
        target: TargetSettings,
        schedule: Schedule,
        journal: Journal,
        execution: Execution,
        outcomes: Outcomes,
        gate: ApiGate,
        resettle: Resettle,
        clock: Clock,
        owner: str,
    ) -> None:
        self._target = target
        self._schedule = schedule
        self._journal = journal
        self._execution = execution
        self._outcomes = outcomes
        self._gate = gate
        self._resettle = resettle
        self._clock = clock
        self._owner = owner
        self._workers: dict[asyncio.Task[None], tuple[str, int] | None] = {}
        self._unreadable: set[str] = set()  # warned once until readable
        self._stopping = False
        self._log = log.bind(target=target.name)

    def start(self) -> None:
        for _ in range(self._target.concurrency):
            self._spawn()

    async def stop(self, grace: float) -> None:
        """Stop taking files; give in-flight deliveries ``grace`` seconds, then cut them off."""
        self._stopping = True
        self._schedule.close()
        busy = [task for task, work in self._workers.items() if work is not None]
        for task in self._workers:
            if task not in busy:
                task.cancel()
        if busy:
            self._log.info("waiting_for_uploads", files=len(busy), grace=grace)
            _, late = await asyncio.wait(busy, timeout=grace)
            for task in late:
                work = self._workers.get(task)
                self._log.warning(
                    "upload_abandoned",
                    file=work[0] if work else None,
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
        work = self._workers.pop(task, None)
        reason = "cancelled" if task.cancelled() else str(task.exception())
        self._log.critical(
            "worker_died", error=reason, action="starting a replacement; please report this with the log"
        )
        if work is not None:
            self._schedule.later(*work, self._target.retry.backoff)
        self._spawn()

    async def _work(self) -> None:
        current = asyncio.current_task()
        assert current is not None
        while not self._stopping:
            try:
                path, record_id = await self._schedule.take()
            except ScheduleClosedError:
                return
            self._workers[current] = (path, record_id)
            claim: Claim | None = None
            try:
                claim = await self._journal.claim(record_id, self._owner, self._clock.now())
                if claim is None:
                    self._schedule.done(path)  # finished meanwhile, or another daemon has it
                else:
                    await self._process(claim)
            except asyncio.CancelledError:
                if claim is not None:
                    with contextlib.suppress(Exception):
                        await self._journal.release(claim, self._clock.now())
                raise  # the work stays attached to this task, so _worker_ended can requeue it
            except LeaseLostError as error:
                # A shared journal gave the file to another daemon: it delivers and files it.
                self._log.warning(
                    "claim_lost",
                    file=path,
                    reason=str(error),
                    action="another daemon of the group took it over; this one leaves the file and its "
                    "journal row alone",
                )
                self._schedule.done(path)
            except JournalUnavailableError:
                self._schedule.later(path, record_id, _JOURNAL_RETRY_SECONDS)
            except Exception as error:  # a bug, a full disk: the worker and the file survive
                self._log.error("worker_error", error=str(error), error_type=type(error).__name__)
                self._log.debug("worker_traceback", exc_info=True)
                await self._after_internal_error(path, record_id, claim, error)
            self._workers[current] = None

    async def _process(self, claim: Claim) -> None:
        """Work on a claim; with a shared journal, stop the moment the claim is lost."""
        lost = self._journal.lease_watch(claim)
        if lost is None:
            await self._process_claimed(claim)
            return
        work = asyncio.ensure_future(self._process_claimed(claim))
        watch = asyncio.ensure_future(lost.wait())
        try:
            await asyncio.wait((work, watch), return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
            if not work.done():
                work.cancel()
                # The cut-off delivery must not write anything more (its claim is gone).
                await asyncio.gather(work, return_exceptions=True)
        if work.cancelled():
            raise LeaseLostError(f"the lease on {claim.record.path} ran out before it was renewed")
        work.result()

    async def _process_claimed(self, claim: Claim) -> None:
        record = claim.record
        if record.state is FileState.DELIVERED:
            await self._file_away(claim)
            return
        attempt = await self._execution.run(claim)
        await self._act_on(claim, attempt)

    async def _act_on(self, claim: Claim, attempt: Attempt) -> None:
        path = claim.record.path
        ending = attempt.ending
        if ending is Ending.DELIVERED:
            self._gate.answered()
            self._unreadable.discard(path)
            await self._file_away(claim, attempt)
        elif ending is Ending.FAILED and isinstance(attempt.error, ApiUnavailableError):
            # An outage, not the file's fault: no attempt counted; it waits for the API.
            error = attempt.error
            await self._journal.release(claim, self._clock.now())
            self._gate.unavailable(error.message, started=attempt.started, retry_after=error.retry_after)
            self._schedule.later(path, claim.record_id, 0.0)
        elif ending is Ending.FAILED:
            assert attempt.error is not None
            assert not isinstance(attempt.error, LoginFailedError)
            self._gate.answered()
            after = await self._outcomes.failed(claim, attempt.error, attempt.sent)
            if after.verdict is Verdict.RETRY:
                self._schedule.later(path, claim.record_id, after.delay)
            else:
                self._settled(path, after.verdict)
        elif ending is Ending.WAITING_FOR_LOGIN:
            assert isinstance(attempt.error, LoginFailedError)
            # Before anything was sent there is nothing to report; a login that failed in
            # the middle of a delivery is worth a word in the journal.
            midway = attempt.sent is not None
            note = "waiting for a successful login" if midway else None
            await self._journal.release(claim, self._clock.now(), error=note)
            self._wait_for_login(path, claim.record_id, attempt)
        elif ending is Ending.CHANGED_DURING:
            self._gate.answered()
            await self._outcomes.changed_during_upload(claim)
            self._settled(path, Verdict.REPLACED)
        elif ending is Ending.CHANGED_BEFORE:
            await self._journal.release(claim, self._clock.now())
            self._log.info("file_changed_before_upload", file=path, action="waiting for it to settle again")
            self._settled(path, Verdict.REPLACED)
        elif ending is Ending.UNREADABLE:
            await self._journal.release(claim, self._clock.now())
            self._schedule.done(path)
            if path not in self._unreadable:
                self._unreadable.add(path)
                self._log.warning(
                    "file_unreadable",
                    file=path,
                    hint="the daemon's user cannot read it: fix its mode or group; it is tried "
                    "again at the next rescan",
                )
        else:
            event, reason = _GONE_REASONS[ending]
            await self._outcomes.forget(claim, event, reason)
            self._schedule.done(path)
        if ending in _NO_REQUEST:
            self._gate.inconclusive()  # a probe that never reached the API proves nothing

    async def _file_away(self, claim: Claim, attempt: Attempt | None = None) -> None:
        verdict = await self._outcomes.file_away(
            claim, attempt.seconds if attempt else None, attempt.sent if attempt else None
        )
        if verdict is Verdict.RETRY_FILING:
            self._retry_filing(claim.record.path, claim.record_id)
        else:
            self._settled(claim.record.path, verdict)

    def _settled(self, path: str, verdict: Verdict) -> None:
        self._schedule.done(path)
        if verdict is Verdict.REPLACED:
            self._resettle.resettle(path)

    async def _after_internal_error(
        self, path: str, record_id: int, claim: Claim | None, error: Exception
    ) -> None:
        """Retry after an unexpected error, without ever raising (the journal may be the cause)."""
        filing = False
        if claim is None:  # the claim itself failed: nothing to release, try again later
            self._schedule.later(path, record_id, self._target.retry.max_backoff)
            return
        try:
            record = await self._journal.get(record_id)
            filing = record.state is FileState.DELIVERED
            if filing:
                self._retry_filing(path, record_id)
            elif record.state in (FileState.PENDING, FileState.UPLOADING):
                fresh = Claim(record, claim.owner, claim.fence)
                failure = TransientDeliveryError(f"internal error: {error}")
                after = await self._outcomes.failed(fresh, failure, None)
                if after.verdict is Verdict.RETRY:
                    self._schedule.later(path, record_id, after.delay)
                else:
                    self._settled(path, after.verdict)
            else:
                self._schedule.done(path)
        except Exception as second:
            self._log.error(
                "worker_recovery_failed",
                error=str(second),
                action=f"trying the file again in {self._target.retry.max_backoff:g}s",
            )
            self._schedule.later(path, record_id, self._target.retry.max_backoff, filing=filing)

    def _retry_filing(self, path: str, record_id: int) -> None:
        """Try the after_upload action again later, backing off per file."""
        failures = self._schedule.filing_failures(path) + 1
        delay = backoff_delay(failures, self._target.retry.backoff, self._target.retry.max_backoff)
        self._schedule.later(path, record_id, delay, filing=True)

    def _wait_for_login(self, path: str, record_id: int, attempt: Attempt) -> None:
        """Hold the whole target until the login backoff ends; the file waits uncounted."""
        error = attempt.error
        assert isinstance(error, LoginFailedError)
        refused = "login refused: check the username and password" if error.rejected else "login failed"
        self._gate.unavailable(
            f"{refused}: {error}", started=attempt.started, until=error.retry_at, confirmed=error.rejected
        )
        self._schedule.later(path, record_id, 0.0)
