"""When is a file in the drop folder ready to upload?

Ready means: its writer closed it (or it was renamed in, which is atomic) and its size
and mtime then stayed the same for ``settle``. A file being written is never offered:

- created or written to (inotify ``IN_CREATE``/``IN_MODIFY``): *writing*; wait for the
  close while the writer pauses, up to ``stalled_writer_after`` (see the last rule);
- closed after writing, renamed into the folder, or found by a scan: *settling*; offered
  once (size, mtime) held still for ``settle`` (at once when ``settle`` is 0);
- a size or mtime that moved by the end of the settle period (``touch``, a write the
  events missed) restarts it;
- a file found by a scan has no close event to vouch for it (it may have been open for
  writing before the watch began), so it must hold still for at least
  ``SCAN_SETTLE`` even when ``settle`` is 0; a writer still at work touches it within
  that time, and inotify then parks it as *writing*. Its mtime may already say it has not
  changed for that long (a backlog that waited while the daemon was down): then it is
  ready at once;
- a file stuck in *writing* is treated as closed by a scan that sees the same (size,
  mtime) as the scan before it, once neither a write event nor a scan has seen it
  change for ``stalled_writer_after`` (an hour by default): the close event was lost
  (inotify queue overflow) or never came (a hard link, a directory moved in). This is
  the rescan's backstop; a writer that pauses for longer than that gets its file
  uploaded as it stands, so the setting must exceed the longest pause of any writer.

All methods run on the event loop's thread; only timers, no polling. Time is the
loop's clock (``loop.time()``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from uploader_daemon.identity import FileIdentity

Snapshot = FileIdentity  # what a look at the file saw: inode, size, mtime

# How long a file found by a scan must hold still when nothing saw its writer close it.
SCAN_SETTLE = 2.0


@dataclass
class _Entry:
    writing: bool
    snapshot: Snapshot | None = None
    at_least: float = 0.0  # SCAN_SETTLE when no close event vouches for the file
    seen_by_scan: Snapshot | None = None
    last_change: float = 0.0  # loop time of the last write event or scan-seen change
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)


class ReadinessTracker:
    """Turns file events into "ready" offers, per file, with settle timers.

    ``offer`` is called with a file's path once it is ready; ``stat`` gives a path's
    (size, mtime) or None when it is gone; ``stalled_writer_after`` is how long a file
    in *writing* must stay unchanged before a scan may settle it without a close.
    ``failed`` hears about an exception raised in a settle timer (by ``offer`` or
    ``stat``), where no caller is there to catch it; the file is forgotten, so the
    next scan finds it again.
    """

    def __init__(
        self,
        settle: float,
        offer: Callable[[str], None],
        stat: Callable[[str], Snapshot | None],
        loop: asyncio.AbstractEventLoop,
        *,
        stalled_writer_after: float,
        failed: Callable[[str, Exception], None],
        wall: Callable[[], float] | None = None,
    ) -> None:
        self._settle = settle
        self._wall = wall
        self._offer = offer
        self._stat = stat
        self._loop = loop
        self._stalled_writer_after = stalled_writer_after
        self._failed = failed
        self._entries: dict[str, _Entry] = {}

    def tracked(self, path: str) -> bool:
        return path in self._entries

    def written(self, path: str) -> None:
        """Content is being written (created, or modified)."""
        entry = self._entries.get(path)
        if entry is None:
            self._entries[path] = _Entry(writing=True, last_change=self._loop.time())
            return
        self._cancel(entry)
        entry.writing = True
        entry.last_change = self._loop.time()

    def created(self, path: str) -> None:
        """A creation event; duplicates of a file already settling are ignored.

        watchdog simulates creation events for files inside a directory that appears;
        those files are already settling from the directory scan.
        """
        entry = self._entries.get(path)
        if entry is not None and not entry.writing:
            return
        self.written(path)

    def appeared(self, path: str) -> None:
        """A file seen without a close event (polling, a directory that appeared).

        It settles on (size, mtime) for at least ``SCAN_SETTLE``; a file already tracked
        keeps its state.
        """
        if path not in self._entries:
            entry = self._entries[path] = _Entry(writing=False, at_least=SCAN_SETTLE)
            self._start_settling(path, entry)

    def closed(self, path: str) -> None:
        """The writer closed the file, or it was renamed in: start settling."""
        entry = self._entries.setdefault(path, _Entry(writing=False))
        entry.writing = False
        entry.at_least = 0.0  # the writer is done: settle alone decides
        self._start_settling(path, entry)

    def removed(self, path: str) -> None:
        entry = self._entries.pop(path, None)
        if entry is not None:
            self._cancel(entry)

    def removed_below(self, directory: str) -> None:
        """A directory went away (or was renamed): forget everything under it."""
        prefix = directory.rstrip(os.sep) + os.sep
        for path in [p for p in self._entries if p.startswith(prefix)]:
            self.removed(path)

    def scanned(self, path: str, snapshot: Snapshot) -> None:
        """A scan found the file (start-up, periodic rescan, a directory appearing).

        A file in *writing* is settled only when this scan saw what the last one saw
        and nothing changed for ``stalled_writer_after``: a writer may pause for
        minutes mid-file, and two identical scans a minute apart do not mean it is done.
        """
        entry = self._entries.get(path)
        if entry is None:
            entry = self._entries[path] = _Entry(writing=False, at_least=SCAN_SETTLE)
            self._start_settling(path, entry, snapshot)
            return
        if not entry.writing:
            return
        now = self._loop.time()
        if entry.seen_by_scan != snapshot:
            entry.seen_by_scan = snapshot
            entry.last_change = now
        elif now - entry.last_change >= self._stalled_writer_after:
            entry.writing = False  # no close came, and nothing changed for a long time
            self._start_settling(path, entry, snapshot)

    def clear(self) -> None:
        for entry in self._entries.values():
            self._cancel(entry)
        self._entries.clear()

    def _start_settling(self, path: str, entry: _Entry, snapshot: Snapshot | None = None) -> None:
        self._cancel(entry)
        entry.snapshot = snapshot if snapshot is not None else self._stat(path)
        if entry.snapshot is None:
            self.removed(path)
            return
        period = max(self._settle, entry.at_least)
        if period <= 0 or self._held_still_already(entry, period):
            self._ready(path)
            return
        entry.timer = self._loop.call_later(period, self._check, path)

    def _held_still_already(self, entry: _Entry, period: float) -> bool:
        """A file no event vouches for, whose mtime says it has not changed for ``period``.

        Its last write is that old, so watching it hold still for as long again proves
        nothing more: a backlog found at start goes out at once instead of after a wait.
        """
        if self._wall is None or entry.at_least <= 0 or entry.snapshot is None:
            return False
        mtime_ns = getattr(entry.snapshot, "mtime_ns", None)
        return isinstance(mtime_ns, int) and self._wall() - mtime_ns / 1e9 >= period

    def _check(self, path: str) -> None:
        """The settle timer: runs as a loop callback, so it must not raise."""
        try:
            self._settle_check(path)
        except Exception as error:
            self.removed(path)
            self._failed(path, error)

    def _settle_check(self, path: str) -> None:
        entry = self._entries.get(path)
        if entry is None or entry.writing:
            return
        entry.timer = None
        current = self._stat(path)
        if current is None:
            self.removed(path)
        elif current == entry.snapshot:
            self._ready(path)
        else:
            self._start_settling(path, entry, current)

    def _ready(self, path: str) -> None:
        self.removed(path)
        self._offer(path)

    @staticmethod
    def _cancel(entry: _Entry) -> None:
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
