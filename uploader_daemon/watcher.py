"""Watching a target's drop folder: watchdog events plus scans, handed to the event loop.

watchdog's observer thread only forwards events to the loop
(``call_soon_threadsafe``); every decision happens on the loop thread in the
:class:`~uploader_daemon.readiness.ReadinessTracker`. A scan at start-up finds files
that arrived while the daemon was down, and a periodic rescan is the backstop for
missed or overflowed events. ``watch.poll`` swaps inotify for polling (NFS/SMB shares,
where inotify sees nothing of other clients' writes).

Which files are candidates is :mod:`uploader_daemon.drop_folder`'s business; symlinks
are never offered (a drop folder must not become a way to read other files) and are
warned about once.

Nothing here gets stuck on one bad thing: a sub-folder that cannot be listed is warned
about once and skipped (only an unreadable drop folder fails a scan); an event or a
file whose handling raises (the journal's disk full) is logged and the rest go on; and
when the watch itself dies (the drop folder removed and recreated, which ends inotify's
watch) the next scan starts a new observer. Listing folders and stopping observers
happen in worker threads, never on the loop; all bookkeeping stays on the loop thread.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import os
import time
from collections.abc import Callable

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
)
from watchdog.observers.api import BaseObserver

from uploader_daemon.config.schema import TargetSettings
from uploader_daemon.drop_folder import GONE, DropFolder, Listing
from uploader_daemon.logs import get_logger
from uploader_daemon.observers import STOP_TIMEOUT, start_observer, stop_observer
from uploader_daemon.readiness import ReadinessTracker, Snapshot

log = get_logger(__name__)


class FolderWatcher:
    """Offers each ready file of one target's folder, exactly when it becomes ready."""

    def __init__(
        self,
        target: TargetSettings,
        offer: Callable[[str], None],
        already_handled: Callable[[str, Snapshot], bool],
        folder: DropFolder | None = None,
    ) -> None:
        self._target = target
        self._folder = folder if folder is not None else DropFolder(target)
        self._offer = offer
        self._already_handled = already_handled
        # Only touched on the loop thread.
        self._warned_symlinks: set[str] = set()
        self._warned_subfolders: set[str] = set()
        self._observer: BaseObserver | None = None
        self._observer_lock = asyncio.Lock()  # a restart and stop() never overlap
        self._running = False
        self._folder_deleted = False  # the observer reported the drop folder itself gone
        self._tracker: ReadinessTracker | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._directory_scans: set[asyncio.Task[None]] = set()
        self._log = log.bind(target=target.name)
        self.events_have_close = False
        # (observer generation, event): events of an observer since replaced are dropped.
        self._pending_events: collections.deque[tuple[int, FileSystemEvent]] = collections.deque()
        self._drain_scheduled = False
        self._generation = 0

    def start(self) -> None:
        """Start the observer (must be called from the event loop's thread).

        Raises OSError when neither inotify nor polling can watch the folder.
        """
        self._loop = asyncio.get_running_loop()
        self._tracker = ReadinessTracker(
            self._target.settle,
            self._offer,
            self._folder.snapshot,
            self._loop,
            stalled_writer_after=self._target.watch.stalled_writer_after,
            failed=self._settle_check_failed,
            wall=time.time,
        )
        self._generation += 1
        self._observer, self.events_have_close = self._start_observer(self._generation)
        self._running = True

    async def stop(self) -> None:
        """Stop watching: the observer is stopped and joined in a thread, not on the loop.

        Safe to call more than once, and before :meth:`start`.
        """
        self._running = False
        for task in self._directory_scans:
            task.cancel()
        if self._tracker is not None:
            self._tracker.clear()
        async with self._observer_lock:
            observer, self._observer = self._observer, None
            if observer is not None and not await asyncio.to_thread(stop_observer, observer):
                self._log.warning("watch_stop_timed_out", timeout=STOP_TIMEOUT)

    @property
    def watching(self) -> bool:
        """Started, not stopped, and its watch alive (a dead one is restarted by the next scan)."""
        return self._running and not self._observer_dead()

    def resettle(self, relative_path: str) -> None:
        """A queued file changed before its upload: watch it settle again."""
        if self._tracker is None:
            return
        snapshot = self._folder.snapshot(relative_path)
        if snapshot is None:
            self._tracker.removed(relative_path)  # gone since: nothing to settle
        else:
            self._tracker.scanned(relative_path, snapshot)

    async def scan(self) -> int:
        """Restart a dead watch, list the folder (in a thread), hand unknown files to the tracker.

        Returns how many files were new to the daemon. Never raises: a vanished folder,
        or a file whose handling fails, is logged and the next scan tries again.
        """
        new = 0
        try:
            await self._restart_observer_if_dead()
            parts = self._folder.listings(self._folder.root)
            # Each part is considered as it comes: the first files of a backlog of
            # thousands go out while the rest of the folder is still being read.
            while (part := await asyncio.to_thread(next, parts, None)) is not None:
                new += self._consider(part)
        except OSError as error:
            self._log.error(
                "scan_failed",
                folder=self._folder.root,
                error=error.strerror or str(error),
                hint="check that the drop folder exists and is readable",
            )
            return new
        except Exception as error:  # a bug must not end the rescan job's promise
            self._log.error(
                "scan_failed", folder=self._folder.root, error=str(error), error_type=type(error).__name__
            )
            self._log.debug("scan_traceback", exc_info=error)
            return new
        return new

    def _consider(self, listing: Listing) -> int:
        """Hand a listing to the tracker; returns how many files were new. Never raises."""
        self._report_listing(listing)
        tracker = self._tracker
        if tracker is None or not self._running:
            return 0
        new = 0
        failed = 0
        first_error: Exception | None = None
        for relative_path, snapshot in listing.files:
            try:
                if self._already_handled(relative_path, snapshot):
                    continue
                if not tracker.tracked(relative_path):
                    new += 1
                tracker.scanned(relative_path, snapshot)
            except Exception as error:  # one file (or a full journal disk) must not end the scan
                failed += 1
                first_error = first_error or error
        if first_error is not None:
            self._log.error(
                "scan_files_failed",
                files=failed,
                error=str(first_error),
                error_type=type(first_error).__name__,
                hint="the next rescan tries these files again; check the state_dir's disk",
            )
            self._log.debug("scan_files_traceback", exc_info=first_error)
        return new

    def _report_listing(self, listing: Listing) -> None:
        """Warn once per symlink and per unreadable sub-folder (on the loop thread)."""
        for relative_path in listing.symlinks:
            self._warn_symlink(relative_path)
        for relative_dir in listing.readable:
            self._warned_subfolders.discard(relative_dir)  # readable again: warn if it breaks again
        for relative_dir, error in listing.unreadable:
            if relative_dir in self._warned_subfolders:
                continue
            self._warned_subfolders.add(relative_dir)
            self._log.warning(
                "subfolder_unreadable",
                folder=relative_dir,
                error=error.strerror or str(error),
                action="skipped; the rest of the drop folder is still watched",
                hint="give the daemon's user read and search permission on it, or add it to exclude",
            )

    # --- the observer ----------------------------------------------------------------

    def _observer_dead(self) -> bool:
        """The watch ended while we still want it (the observer or one of its emitters died).

        inotify ends an emitter when the drop folder itself is deleted, but the
        observer thread lives on, so ``is_alive()`` alone never notices.
        """
        observer = self._observer
        if not self._running:
            return False
        if observer is None or self._folder_deleted or not observer.is_alive():
            return True
        return any(not emitter.is_alive() for emitter in list(observer.emitters))

    async def _restart_observer_if_dead(self) -> None:
        """Replace a dead observer, if the drop folder exists; raises OSError if it does not."""
        if not self._observer_dead():
            return
        async with self._observer_lock:
            if not self._observer_dead():
                return  # a concurrent scan restarted it, or stop() ran
            # Deleted, not yet recreated: the listing would fail too; scan_failed says so.
            if not await asyncio.to_thread(os.path.isdir, self._folder.root):
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), self._folder.root)
            self._log.warning(
                "watch_restarting",
                reason="the drop folder was removed" if self._folder_deleted else "the observer stopped",
            )
            old, self._observer = self._observer, None
            self._folder_deleted = False
            # Bumped here, on the loop: from now on the old observer's events are dropped.
            self._generation += 1
            try:
                self._observer, self.events_have_close = await asyncio.to_thread(
                    self._replace_observer, old, self._generation
                )
            except OSError as error:
                # The scan still lists the folder; the next one tries the watch again.
                self._log.error(
                    "watch_restart_failed",
                    folder=self._folder.root,
                    error=error.strerror or str(error),
                    hint="files are found by rescans only until the watch is back",
                )

    def _replace_observer(self, old: BaseObserver | None, generation: int) -> tuple[BaseObserver, bool]:
        """Runs in a thread: stop and join the dead observer, then start a new one.

        Touches no state of the watcher: the loop thread stores what it returns.
        """
        if old is not None and not stop_observer(old):
            raise TimeoutError(errno.ETIMEDOUT, "the old observer did not stop")
        return self._start_observer(generation)

    def _start_observer(self, generation: int) -> tuple[BaseObserver, bool]:
        return start_observer(
            self._target, self._folder.root, lambda event: self.post(event, generation), self._log
        )

    def post(self, event: FileSystemEvent, generation: int) -> None:
        """Called in watchdog's thread: queue the event for the loop thread.

        Events are batched: a burst of them costs one loop wake-up, not one each.
        ``generation`` says which observer sent it.
        """
        loop = self._loop
        if loop is None:
            return
        self._pending_events.append((generation, event))
        if self._drain_scheduled:
            return
        self._drain_scheduled = True
        # RuntimeError: the loop closed during shutdown; the events no longer matter.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._drain_events)

    def _drain_events(self) -> None:
        # Clear the flag first: an event appended after this point schedules a new drain.
        self._drain_scheduled = False
        while self._pending_events:
            generation, event = self._pending_events.popleft()
            if generation != self._generation:
                continue  # from a replaced observer: the scan after the restart covers it
            try:
                self._event(event)
            except Exception as error:  # one event must not cost the rest of the batch
                self._log.error(
                    "watch_event_failed",
                    event_type=event.event_type,
                    file=self._folder.relative(event.src_path) or os.fsdecode(event.src_path),
                    error=str(error),
                    error_type=type(error).__name__,
                    hint="the next rescan finds the file again",
                )
                self._log.debug("watch_event_traceback", exc_info=error)

    def _settle_check_failed(self, relative_path: str, error: Exception) -> None:
        """A settle timer raised (the offer failed): the tracker forgot the file; a scan finds it."""
        self._log.error(
            "settle_check_failed",
            file=relative_path,
            error=str(error),
            error_type=type(error).__name__,
            hint="the next rescan offers the file again",
        )
        self._log.debug("settle_check_traceback", exc_info=error)

    def _event(self, event: FileSystemEvent) -> None:
        """Handle one watchdog event on the loop thread."""
        tracker = self._tracker
        if tracker is None or not self._running:
            return  # stopped: nothing may be offered any more
        source = self._folder.relative(event.src_path)
        if isinstance(event, FileMovedEvent | DirMovedEvent):
            destination = self._folder.relative(event.dest_path)
            if event.is_directory:
                if source:
                    tracker.removed_below(source)
                if destination and self._folder.wanted_directory(destination):
                    self._scan_directory(destination)
                return
            if source:
                tracker.removed(source)
            if destination and self._wanted_file(destination):
                tracker.closed(destination)
            return
        if not source:
            return
        if isinstance(event, DirDeletedEvent):
            if source == ".":
                # inotify's watch ended with the folder; the next scan starts a new one.
                self._folder_deleted = True
                self._log.error(
                    "drop_folder_removed",
                    folder=self._folder.root,
                    hint="recreate it; the next rescan resumes watching",
                )
                tracker.clear()
                return
            tracker.removed_below(source)
        elif isinstance(event, DirCreatedEvent):
            if self._folder.wanted_directory(source):
                self._scan_directory(source)
        elif isinstance(event, FileDeletedEvent):
            tracker.removed(source)
        elif not self._wanted_file(source):
            return
        elif isinstance(event, FileClosedEvent):
            tracker.closed(source)
        elif isinstance(event, FileCreatedEvent):
            if event.is_synthetic:
                # watchdog made this up for a file inside a directory that appeared:
                # the file may be complete already, and no close may ever come.
                tracker.appeared(source)
            elif self.events_have_close:
                tracker.created(source)
            else:
                tracker.appeared(source)
        elif isinstance(event, FileModifiedEvent):
            if self.events_have_close:
                tracker.written(source)
            else:
                tracker.appeared(source)  # polling: no close will come; settle on (size, mtime)

    def _scan_directory(self, relative_dir: str) -> None:
        """List a sub-folder that appeared (created or moved in), in a task of its own."""
        assert self._loop is not None
        task = self._loop.create_task(self._scan_subfolder(relative_dir))
        # The loop keeps only a weak reference to a task: hold it until it is done.
        self._directory_scans.add(task)
        task.add_done_callback(self._directory_scans.discard)

    async def _scan_subfolder(self, relative_dir: str) -> None:
        directory = os.path.join(self._folder.root, relative_dir)
        try:
            listing = await asyncio.to_thread(self._folder.list_files, directory)
        except OSError as error:
            if error.errno in GONE:
                return  # gone again already: its own event says so
            listing = Listing(unreadable=[(relative_dir, error)])
        except Exception as error:  # a task's exception would otherwise go unseen
            self._log.error(
                "subfolder_scan_failed",
                folder=relative_dir,
                error=str(error),
                error_type=type(error).__name__,
                hint="the next rescan lists it again",
            )
            self._log.debug("subfolder_scan_traceback", exc_info=error)
            return
        self._consider(listing)

    # --- candidates -------------------------------------------------------------------

    def _wanted_file(self, relative_path: str) -> bool:
        """An event's file is a candidate (loop thread only: it warns about symlinks)."""
        if not self._folder.wanted_name(relative_path):
            return False
        if os.path.islink(self._folder.full(relative_path)):
            self._warn_symlink(relative_path)
            return False
        return True

    def _warn_symlink(self, relative_path: str) -> None:
        if relative_path not in self._warned_symlinks:
            self._warned_symlinks.add(relative_path)
            self._log.warning(
                "symlink_skipped",
                file=relative_path,
                reason="symlinks are never followed out of a drop folder",
            )
