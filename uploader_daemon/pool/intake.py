"""Admitting a target's ready files: a journal row first, then a place in the schedule.

Readiness (:mod:`uploader_daemon.readiness`) says *when* a file is ready; the intake
records it in the journal (``pending``, or nothing when the journal already knows this
version) and queues it. Admission is a coroutine (the journal is), so ready files are
collected and admitted by one task, in the order they became ready.

The intake also answers the scans' question "can this file be skipped?": when it is
scheduled, or when the journal refused this very version (kept, failed and left in
place, or another daemon's) and it has not changed since.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import stat

from uploader_daemon.clock import Clock
from uploader_daemon.config.schema import TargetSettings
from uploader_daemon.errors import JournalUnavailableError
from uploader_daemon.identity import FileIdentity
from uploader_daemon.journal import Journal
from uploader_daemon.logs import get_logger
from uploader_daemon.pool.schedule import Schedule

log = get_logger(__name__)

# How many refused versions the intake remembers (deleted files are never forgotten one by one).
_REFUSED_MEMORY = 100_000
# How many ready files are admitted together (one journal commit).
_ADMISSION_BATCH = 256
# A shared journal that does not answer: the files are offered again after this long.
_JOURNAL_RETRY_SECONDS = 2.0


class Intake:
    """Turns "this file is ready" into a journal row and a schedule entry."""

    def __init__(self, target: TargetSettings, journal: Journal, schedule: Schedule, clock: Clock) -> None:
        self._target = target
        self._root = str(target.folder)
        self._journal = journal
        self._schedule = schedule
        self._clock = clock
        self._ready: dict[str, None] = {}  # insertion-ordered: first ready, first admitted
        self._refused: dict[str, FileIdentity] = {}
        self._admitting: asyncio.Task[None] | None = None
        self._stopped = False
        self._log = log.bind(target=target.name)

    def offer(self, relative_path: str) -> None:
        """A file is ready (called on the loop thread by readiness); never raises."""
        if self._stopped or self._schedule.is_scheduled(relative_path):
            return
        self._ready[relative_path] = None
        if self._admitting is None:
            self._admitting = asyncio.get_running_loop().create_task(
                self._admit_ready(), name=f"{self._target.name}-intake"
            )

    def known(self, relative_path: str, identity: FileIdentity) -> bool:
        """Whether a scan may skip the file: scheduled, or this version was refused before."""
        if relative_path in self._ready or self._schedule.is_scheduled(relative_path):
            return True
        refused = self._refused.get(relative_path)
        return refused is not None and refused.same_version(identity)

    async def resume_unfinished(self) -> int:
        """Queue what the journal says is unfinished (after a restart); returns how many."""
        records = await self._journal.unfinished(self._target.name)
        for record in records:
            self._schedule.put(record.path, record.id)
        if records:
            self._log.info("unfinished_files_resumed", files=len(records))
        return len(records)

    async def take_over(self) -> int:
        """Queue the rows of a shared journal that any daemon may claim now (work another
        daemon left: its backoff is over, or its lease ran out); returns how many."""
        try:
            claimable = await self._journal.claimable(self._target.name)
        except JournalUnavailableError:
            return 0  # the journal logs its outage once
        queued = sum(1 for record_id, path in claimable if self._schedule.put(path, record_id))
        if queued:
            self._log.debug("claimable_files_queued", files=queued)
        return queued

    async def stop(self) -> None:
        """Admit nothing more (what is not admitted yet is found again by the next start's scan)."""
        self._stopped = True
        self._ready.clear()
        if self._admitting is not None:
            self._admitting.cancel()
            await asyncio.gather(self._admitting, return_exceptions=True)

    async def _admit_ready(self) -> None:
        try:
            while self._ready and not self._stopped:
                # Admitted together, their journal rows share one commit (a backlog of
                # thousands is admitted in batches, and the first files go out at once).
                batch = list(itertools.islice(self._ready, _ADMISSION_BATCH))
                for relative_path in batch:
                    del self._ready[relative_path]
                await asyncio.gather(*(self._admit(relative_path) for relative_path in batch))
        finally:
            self._admitting = None

    async def _admit(self, relative_path: str) -> None:
        try:
            info = os.lstat(os.path.join(self._root, relative_path))
        except FileNotFoundError:
            return
        if not stat.S_ISREG(info.st_mode):
            return
        identity = FileIdentity.of(info)
        try:
            record = await self._journal.admit(self._target.name, relative_path, identity, self._clock.now())
        except JournalUnavailableError:
            # Logged once by the journal; the file is offered again soon, not at the next rescan.
            asyncio.get_running_loop().call_later(_JOURNAL_RETRY_SECONDS, self.offer, relative_path)
            return
        except Exception as error:  # a full journal disk: the next rescan offers it again
            self._log.error(
                "admission_failed",
                file=relative_path,
                error=str(error),
                error_type=type(error).__name__,
                hint="the next rescan tries the file again; check the state_dir's disk",
            )
            self._log.debug("admission_traceback", exc_info=error)
            return
        if record is None:
            if len(self._refused) >= _REFUSED_MEMORY:
                self._refused.clear()  # only a shortcut: forgetting costs one look-up per file
            self._refused[relative_path] = identity
            return
        self._refused.pop(relative_path, None)
        if self._schedule.put(relative_path, record.id):
            # Debug: at info, file_delivered (or a warning) is the one line per file.
            self._log.debug("file_queued", file=relative_path, size=identity.size)
