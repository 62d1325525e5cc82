"""A target's in-memory schedule: which files are queued, waiting on a timer, or in flight.

Each scheduled file has exactly one entry, keyed by its path: the journal row it stands
for, its phase, its timer. The journal says *what* state a file is in; the schedule says
*when* this process works on it next. The queue is ordered by discovery (journal row
id), so files go out in the order they arrived.

A target can be paused as a whole (login backing off, the API down): :meth:`take`
then waits until the pause ends or :meth:`resume` lifts it early. Everything runs on the
event loop's thread; delays are loop (monotonic) time.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from dataclasses import dataclass, field


class Phase(enum.Enum):
    QUEUED = "queued"  # in the queue, ready for a worker
    WAITING = "waiting"  # on a timer: backing off, or a filing retry
    RUNNING = "running"  # a worker has it


@dataclass
class _Entry:
    record_id: int
    phase: Phase
    filing: bool = False  # delivered; only its after_upload move is left (needs no API)
    filing_failures: int = 0
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)


class ScheduleClosedError(Exception):
    """The schedule was closed (the target stops): no more files are handed out."""


class Schedule:
    """The files of one target this process will work on, and when."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._queue: asyncio.PriorityQueue[tuple[int, str]] = asyncio.PriorityQueue()
        self._paused_until = 0.0
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._closed = False

    # --- what is scheduled -----------------------------------------------------------

    def is_scheduled(self, path: str) -> bool:
        return path in self._entries

    def files_waiting(self) -> bool:
        """Whether a file needs the API: queued, backing off or in flight (not just filing)."""
        return any(not entry.filing for entry in self._entries.values())

    def record_of(self, path: str) -> int | None:
        entry = self._entries.get(path)
        return entry.record_id if entry else None

    def counts(self) -> tuple[int, int]:
        """``(scheduled, in flight)``: files waiting or backing off or in flight, and those in flight."""
        running = sum(1 for entry in self._entries.values() if entry.phase is Phase.RUNNING)
        return len(self._entries), running

    def filing_failures(self, path: str) -> int:
        entry = self._entries.get(path)
        return entry.filing_failures if entry else 0

    # --- scheduling ------------------------------------------------------------------

    def put(self, path: str, record_id: int) -> bool:
        """Queue a file now; returns False when it is already scheduled (nothing changes)."""
        if self._closed or path in self._entries:
            return False
        self._entries[path] = _Entry(record_id, Phase.QUEUED)
        self._queue.put_nowait((record_id, path))
        return True

    def later(self, path: str, record_id: int, delay: float, *, filing: bool = False) -> None:
        """Hand the file out again after ``delay`` seconds (a retry, a filing retry, a wait)."""
        if self._closed:
            return
        entry = self._entries.get(path)
        if entry is None or entry.record_id != record_id:
            entry = self._entries[path] = _Entry(record_id, Phase.WAITING)
        self._cancel_timer(entry)
        entry.phase = Phase.WAITING
        if filing:
            entry.filing = True
            entry.filing_failures += 1
        loop = asyncio.get_running_loop()
        entry.timer = loop.call_later(delay, self._due, path, record_id)

    def done(self, path: str) -> None:
        """The file needs nothing more from this process (delivered and filed, given up, gone)."""
        entry = self._entries.pop(path, None)
        if entry is not None:
            self._cancel_timer(entry)

    async def take(self) -> tuple[str, int]:
        """The next queued file as ``(path, record_id)``, now in flight; waits while paused.

        Raises :class:`ScheduleClosedError` once the schedule is closed.
        """
        while True:
            await self._pause_over()
            if self._closed:
                raise ScheduleClosedError
            record_id, path = await self._queue.get()
            entry = self._entries.get(path)
            if entry is None or entry.record_id != record_id or entry.phase is not Phase.QUEUED:
                continue  # dropped or rescheduled since it was queued
            if self._closed:
                raise ScheduleClosedError
            entry.phase = Phase.RUNNING
            return path, record_id

    # --- pausing ---------------------------------------------------------------------

    def pause(self, until: float) -> None:
        """Hand out nothing before loop time ``until`` (extends, never shortens, a pause)."""
        if until > self._paused_until:
            self._paused_until = until
            self._resumed.clear()

    def resume(self) -> None:
        """Lift a pause now."""
        self._paused_until = 0.0
        self._resumed.set()

    @property
    def paused(self) -> bool:
        return asyncio.get_running_loop().time() < self._paused_until

    async def _pause_over(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closed and (remaining := self._paused_until - loop.time()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._resumed.wait(), remaining)

    # --- stopping --------------------------------------------------------------------

    def close(self) -> None:
        """Stop handing out files and cancel the timers (idle takers are cancelled by the pool)."""
        self._closed = True
        for entry in self._entries.values():
            self._cancel_timer(entry)
        self._resumed.set()

    # --- internals -------------------------------------------------------------------

    def _due(self, path: str, record_id: int) -> None:
        entry = self._entries.get(path)
        if entry is None or entry.record_id != record_id or self._closed:
            return
        entry.timer = None
        entry.phase = Phase.QUEUED
        self._queue.put_nowait((record_id, path))

    @staticmethod
    def _cancel_timer(entry: _Entry) -> None:
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
