"""watchdog observers for a drop folder: which kind, started how, stopped how.

inotify (``InotifyObserver`` with full events, so a file moved in arrives as a move and
closes are reported) unless ``watch.poll`` asks for polling (NFS/SMB shares, where
inotify sees nothing of other clients' writes) or inotify cannot watch the folder
(watch limits, an unsupported filesystem), in which case polling takes over with a
warning. Observers run in threads of their own; their handler only hands each event to
a callback. Nothing here keeps state: the watcher owns the observer it gets back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from structlog.typing import FilteringBoundLogger
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

# How long stopping an observer may take before we give up on its thread (a daemon thread).
STOP_TIMEOUT = 5.0


def start_observer(
    target: TargetSettings, root: str, deliver: Callable[[FileSystemEvent], None], log: FilteringBoundLogger
) -> tuple[BaseObserver, bool]:
    """A started observer of ``root`` handing events to ``deliver`` (in its own thread),
    and whether its events include closes.

    Raises OSError when neither inotify nor polling can watch the folder.
    """
    observer, has_close = _make_observer(target)
    handler = _Forwarder(deliver)
    try:
        observer.schedule(handler, root, recursive=target.recursive, event_filter=_EVENTS)
        observer.start()
    except OSError as error:
        if target.watch.poll:
            raise
        # inotify watch limits (ENOSPC) or an unsupported filesystem: keep working.
        log.warning(
            "inotify_unavailable",
            error=str(error),
            action="polling instead",
            hint="raise fs.inotify.max_user_watches or set watch.poll: true",
        )
        observer = PollingObserver(timeout=target.watch.poll_interval)
        observer.schedule(handler, root, recursive=target.recursive, event_filter=_EVENTS)
        observer.start()
        has_close = False
    return observer, has_close


def stop_observer(observer: BaseObserver) -> bool:
    """Stop an observer and wait for its threads; False if they outlived the wait.

    Blocking: call it in a worker thread.
    """
    observer.stop()
    with contextlib.suppress(RuntimeError):  # never started
        observer.join(STOP_TIMEOUT)
    return not observer.is_alive()


def _make_observer(target: TargetSettings) -> tuple[BaseObserver, bool]:
    if target.watch.poll:
        return PollingObserver(timeout=target.watch.poll_interval), False
    try:
        from watchdog.observers.inotify import InotifyObserver
    except ImportError:  # not Linux: the platform's native observer, which has no close events
        from watchdog.observers import Observer

        observer: BaseObserver = Observer()
        return observer, False
    # Full events: a file moved in from outside arrives as a move, not as a creation
    # that would wait for a close that never comes.
    return InotifyObserver(generate_full_events=True), True


class _Forwarder(FileSystemEventHandler):
    """Runs in watchdog's thread: hands every event on, nothing else."""

    def __init__(self, deliver: Callable[[FileSystemEvent], None]) -> None:
        self._deliver = deliver

    def on_any_event(self, event: FileSystemEvent) -> None:
        self._deliver(event)
