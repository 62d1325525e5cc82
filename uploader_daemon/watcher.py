"""Watching a target's drop folder: watchdog events plus scans, handed to the event loop.

watchdog's observer thread only forwards events to the loop
(``call_soon_threadsafe``); every decision happens on the loop thread in the
:class:`~uploader_daemon.readiness.ReadinessTracker`. A scan at start-up finds files
that arrived while the daemon was down, and a periodic rescan is the backstop for
missed or overflowed events. ``watch.poll`` swaps inotify for polling (NFS/SMB shares,
where inotify sees nothing of other clients' writes).

What is never offered: names outside ``include`` or inside ``exclude`` (checked on the
file name and on each sub-folder name), symlinks (a drop folder must not become a way to
read other files; warned once), sub-folders unless ``recursive``, and the folders the
daemon itself writes into.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fnmatch
import os
import stat
from collections.abc import Callable
from pathlib import Path

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
    FileSystemEventHandler,
)
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from uploader_daemon.config.schema import TargetSettings
from uploader_daemon.logs import get_logger
from uploader_daemon.readiness import ReadinessTracker, Snapshot

log = get_logger(__name__)

_EVENTS = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileClosedEvent,
    FileMovedEvent,
    FileDeletedEvent,
    DirCreatedEvent,
    DirMovedEvent,
    DirDeletedEvent,
]


class FolderWatcher:
    """Offers each ready file of one target's folder, exactly when it becomes ready."""

    def __init__(
        self,
        target: TargetSettings,
        offer: Callable[[str], None],
        already_handled: Callable[[str, Snapshot], bool],
    ) -> None:
        self._target = target
        self._folder = str(target.folder)
        self._prefix = self._folder.rstrip(os.sep) + os.sep
        self._offer = offer
        self._already_handled = already_handled
        self._own_folders = {str(path) for path in target.output_folders.values()}
        self._warned_symlinks: set[str] = set()
        self._observer: BaseObserver | None = None
        self._tracker: ReadinessTracker | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._log = log.bind(target=target.name)
        self.events_have_close = False
        self._pending_events: collections.deque[FileSystemEvent] = collections.deque()
        self._drain_scheduled = False

    def start(self) -> None:
        """Start the observer (must be called from the event loop's thread)."""
        self._loop = asyncio.get_running_loop()
        self._tracker = ReadinessTracker(self._target.settle, self._offer, self._snapshot, self._loop)
        self._observer = self._start_observer()

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
        if self._tracker is not None:
            self._tracker.clear()

    def resettle(self, relative_path: str) -> None:
        """A queued file changed before its upload: watch it settle again."""
        if self._tracker is not None:
            self._tracker.scanned(relative_path, self._snapshot(relative_path) or (-1, -1))

    async def scan(self) -> int:
        """List the folder (in a thread) and hand unknown files to the tracker.

        Returns how many files were new to the daemon. Never raises: a vanished folder
        is logged and the next scan tries again.
        """
        try:
            found = await asyncio.to_thread(self._list_files, self._folder)
        except OSError as error:
            self._log.error(
                "scan_failed",
                folder=self._folder,
                error=error.strerror or str(error),
                hint="check that the drop folder exists and is readable",
            )
            return 0
        return self._consider(found)

    def _consider(self, found: list[tuple[str, Snapshot]]) -> int:
        assert self._tracker is not None
        new = 0
        for relative_path, snapshot in found:
            if self._already_handled(relative_path, snapshot):
                continue
            if not self._tracker.tracked(relative_path):
                new += 1
            self._tracker.scanned(relative_path, snapshot)
        if self._observer is not None and not self._observer.is_alive():
            self._log.warning("watch_restarting", reason="the observer stopped")
            self._observer = self._start_observer()
        return new

    # --- the observer ----------------------------------------------------------------

    def _start_observer(self) -> BaseObserver:
        observer = self._make_observer()
        handler = _Forwarder(self)
        try:
            observer.schedule(handler, self._folder, recursive=self._target.recursive, event_filter=_EVENTS)
            observer.start()
        except OSError as error:
            if self._target.watch.poll:
                raise
            # inotify watch limits (ENOSPC) or an unsupported filesystem: keep working.
            self._log.warning(
                "inotify_unavailable",
                error=str(error),
                action="polling instead",
                hint="raise fs.inotify.max_user_watches or set watch.poll: true",
            )
            observer = PollingObserver(timeout=self._target.watch.poll_interval)
            observer.schedule(handler, self._folder, recursive=self._target.recursive, event_filter=_EVENTS)
            observer.start()
            self.events_have_close = False
        return observer

    def _make_observer(self) -> BaseObserver:
        if self._target.watch.poll:
            self.events_have_close = False
            return PollingObserver(timeout=self._target.watch.poll_interval)
        try:
            from watchdog.observers.inotify import InotifyObserver
        except ImportError:  # not Linux: the platform's native observer, which has no close events
            from watchdog.observers import Observer

            self.events_have_close = False
            observer: BaseObserver = Observer()
            return observer
        self.events_have_close = True
        # Full events: a file moved in from outside arrives as a move, not as a creation
        # that would wait for a close that never comes.
        return InotifyObserver(generate_full_events=True)

    def post(self, event: FileSystemEvent) -> None:
        """Called in watchdog's thread: queue the event for the loop thread.

        Events are batched: a burst of them costs one loop wake-up, not one each.
        """
        loop = self._loop
        if loop is None:
            return
        self._pending_events.append(event)
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
            self._event(self._pending_events.popleft())

    def _event(self, event: FileSystemEvent) -> None:
        """Handle one watchdog event on the loop thread."""
        tracker = self._tracker
        if tracker is None:
            return
        source = self._relative(event.src_path)
        if isinstance(event, FileMovedEvent | DirMovedEvent):
            destination = self._relative(event.dest_path)
            if event.is_directory:
                if source:
                    tracker.removed_below(source)
                if destination and self._wanted_directory(destination):
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
                self._log.error(
                    "drop_folder_removed",
                    folder=self._folder,
                    hint="recreate it; the next rescan resumes watching",
                )
            tracker.removed_below(source)
        elif isinstance(event, DirCreatedEvent):
            if self._wanted_directory(source):
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
        assert self._loop is not None
        directory = os.path.join(self._folder, relative_dir)

        async def scan() -> None:
            try:
                found = await asyncio.to_thread(self._list_files, directory)
            except OSError:
                return
            self._consider(found)

        self._loop.create_task(scan())

    # --- what counts as a candidate --------------------------------------------------

    def _relative(self, path: str | bytes) -> str:
        """The path relative to the drop folder ("." for the folder, "" if outside it)."""
        text = os.fsdecode(path)
        if text.startswith(self._prefix):
            return text[len(self._prefix) :]  # watchdog reports absolute paths under the folder
        if not text:
            return ""
        relative = os.path.relpath(text, self._folder)
        return "" if relative.startswith("..") else relative

    def _wanted_file(self, relative_path: str) -> bool:
        name = os.path.basename(relative_path)
        parent = os.path.dirname(relative_path)
        if parent and (not self._target.recursive or not self._wanted_directory(parent)):
            return False
        if not _matches(name, relative_path, self._target.include):
            return False
        if _matches(name, relative_path, self._target.exclude):
            return False
        full = os.path.join(self._folder, relative_path)
        if os.path.islink(full):
            if relative_path not in self._warned_symlinks:
                self._warned_symlinks.add(relative_path)
                self._log.warning(
                    "symlink_skipped",
                    file=relative_path,
                    reason="symlinks are never followed out of a drop folder",
                )
            return False
        return True

    def _wanted_directory(self, relative_dir: str) -> bool:
        if not self._target.recursive:
            return False
        full = os.path.join(self._folder, relative_dir)
        if full in self._own_folders or any(full.startswith(own + os.sep) for own in self._own_folders):
            return False
        return not any(_matches(part, part, self._target.exclude) for part in Path(relative_dir).parts)

    def _list_files(self, directory: str) -> list[tuple[str, Snapshot]]:
        """Files under ``directory`` that are candidates, with their (size, mtime). Runs in a thread."""
        found: list[tuple[str, Snapshot]] = []
        pending = [directory]
        while pending:
            current = pending.pop()
            with os.scandir(current) as entries:
                for entry in entries:
                    relative = os.path.relpath(entry.path, self._folder)
                    try:
                        info = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    # Symlinks go to _wanted_file too: it warns about them once.
                    file_like = stat.S_ISREG(info.st_mode) or stat.S_ISLNK(info.st_mode)
                    if stat.S_ISDIR(info.st_mode):
                        if self._wanted_directory(relative):
                            pending.append(entry.path)
                    elif file_like and self._wanted_file(relative):
                        found.append((relative, (info.st_size, info.st_mtime_ns)))
        return found

    def _snapshot(self, relative_path: str) -> Snapshot | None:
        try:
            info = os.lstat(os.path.join(self._folder, relative_path))
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(info.st_mode):
            return None
        return info.st_size, info.st_mtime_ns


class _Forwarder(FileSystemEventHandler):
    """Runs in watchdog's thread: hands every event to the loop, nothing else."""

    def __init__(self, watcher: FolderWatcher) -> None:
        self._watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        self._watcher.post(event)


def _matches(name: str, relative_path: str, patterns: tuple[str, ...]) -> bool:
    """Glob match on the name, or on the relative path for patterns with a ``/``."""
    return any(
        fnmatch.fnmatchcase(relative_path if "/" in pattern else name, pattern) for pattern in patterns
    )
