"""A target's in-memory schedule: which files are queued, waiting on a timer, or in flight.

Each scheduled file has exactly one entry, keyed by its path: the journal row it stands
for, its phase, its timer. The journal says *what* state a file is in; the schedule says
*when* this process works on it next. The queue is ordered by discovery (journal row
id), so files go out in the order they arrived.

A target can be held as a whole (login backing off, the API down): :meth:`take` hands
out nothing until the hold ends, then exactly one file (the probe) and nothing more until
:meth:`resume` lifts the hold or :meth:`hold` sets the next one. Everything runs on the
event loop's thread; delays are loop (monotonic) time.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import math
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
        self._held_until = 0.0
        self._holding = False  # after the hold: one probe, then wait for resume() or hold()
        self._hold_changed = asyncio.Event()  # replaced on every change: waiters look again
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
            await self._hold_over()
            if self._closed:
                raise ScheduleClosedError
            record_id, path = await self._queue.get()
            entry = self._entries.get(path)
            if entry is None or entry.record_id != record_id or entry.phase is not Phase.QUEUED:
                continue  # dropped or rescheduled since it was queued
            if self._closed:
                raise ScheduleClosedError
            if self._holding and not self._hold_over_now():
                # Held again while this taker waited on the queue: put the file back.
                self._queue.put_nowait((record_id, path))
                continue
            if self._holding:
                # This file is the probe: nothing else goes until the hold is lifted or set anew.
                self._held_until = math.inf
            entry.phase = Phase.RUNNING
            return path, record_id

    # --- holding ---------------------------------------------------------------------

    def hold(self, until: float) -> None:
        """Hand out nothing before loop time ``until``, then one probe (see the module docstring)."""
        self._holding = True
        self._held_until = until
        self._wake_takers()

    def resume(self) -> None:
        """Lift the hold: every worker may take files again."""
        self._holding = False
        self._held_until = 0.0
        self._wake_takers()

    def _wake_takers(self) -> None:
        self._hold_changed.set()
        self._hold_changed = asyncio.Event()

    @property
    def held(self) -> bool:
        return self._holding

    def _hold_over_now(self) -> bool:
        return asyncio.get_running_loop().time() >= self._held_until

    async def _hold_over(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closed and (remaining := self._held_until - loop.time()) > 0:
            timeout = None if math.isinf(remaining) else remaining
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._hold_changed.wait(), timeout)

    # --- stopping --------------------------------------------------------------------

    def close(self) -> None:
        """Stop handing out files and cancel the timers (idle takers are cancelled by the pool)."""
        self._closed = True
        for entry in self._entries.values():
            self._cancel_timer(entry)
        self._wake_takers()

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
