"""The daemon's lifecycle: ``startup()`` → ``main_loop()`` → ``shutdown()``.

Signal handlers only set flags. The first SIGTERM/SIGINT stops the watchers and gives
in-flight uploads ``shutdown_grace`` seconds; what is cut off stays pending in the
journal, and the exit code is 0. A second signal cuts them off at once (exit 128+N).
Under systemd (``Type=notify``) the daemon reports READY=1 once every folder is watched;
what it tells Prometheus, probes, systemd's watchdog and ``status`` is
:mod:`uploader_daemon.supervision`'s, started before the targets and stopped after them.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from typing import Any

from uploader_daemon import __version__
from uploader_daemon.clock import Clock, SystemClock
from uploader_daemon.config.schema import Config
from uploader_daemon.config.warnings import config_warnings
from uploader_daemon.folder_marker import REFRESH_EVERY, FolderMarkers
from uploader_daemon.journal import Journal, SqliteJournal
from uploader_daemon.logs import get_logger
from uploader_daemon.monitor import QUIET, Fanout, Listener
from uploader_daemon.notify import Notifier
from uploader_daemon.redaction import Redactor
from uploader_daemon.scheduler import Scheduler
from uploader_daemon.service import TargetService
from uploader_daemon.state import StateDir
from uploader_daemon.supervision import Supervision

log = get_logger(__name__)

_DAY = 86400.0
_HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Daemon:
    """Runs every configured target until asked to stop."""

    def __init__(
        self,
        config: Config,
        *,
        redactor: Redactor,
        clock: Clock | None = None,
        handle_signals: bool = True,
        listener: Listener = QUIET,
    ) -> None:
        self.config = config
        self._redactor = redactor
        self._clock = clock or SystemClock()
        self._handle_signals = handle_signals
        self._notifier = Notifier()
        # This daemon's name on its journal claims.
        self.node = socket.gethostname()
        self._state = StateDir(config.state_dir)
        self._scheduler = Scheduler()
        self._journal: Journal | None = None
        self._markers: FolderMarkers | None = None
        self.services: list[TargetService] = []
        self.supervision = Supervision(
            config,
            node=self.node,
            clock=self._clock,
            notifier=self._notifier,
            services=lambda: self.services,
            journal_path=self._state.journal_path,
        )
        self._listener = Fanout([self.supervision.listener, listener])
        self._stop_requested = asyncio.Event()
        self._forced = asyncio.Event()
        self._signals_received: list[int] = []
        self._signal_handlers_installed = False
        self.started = asyncio.Event()

    @property
    def journal(self) -> Journal:
        assert self._journal is not None, "the daemon has not started"
        return self._journal

    async def run(self) -> int:
        """Start, run until stopped, shut down; returns the exit code."""
        try:
            await self.startup()
        except BaseException:
            await self._release()
            raise
        try:
            await self.main_loop()
        finally:
            await self.shutdown()
        if self._forced.is_set() and self._signals_received:
            return 128 + self._signals_received[-1]
        return 0

    def request_stop(self, signum: int | None = None) -> None:
        """Ask the daemon to stop (a second request cuts in-flight uploads off)."""
        if signum is not None:
            self._signals_received.append(signum)
        if self._stop_requested.is_set():
            log.warning("forced_stop", signal=signal.Signals(signum).name if signum else None)
            self._forced.set()
        else:
            log.info("stop_requested", signal=signal.Signals(signum).name if signum else None)
            self._stop_requested.set()

    async def startup(self) -> None:
        self._install_signal_handlers()
        for problem in config_warnings(self.config):
            log.warning("config_warning", problem=problem)
        for tightened in self._state.prepare():
            log.warning("state_dir_tightened", mode=tightened, reason="state files hold tokens and grants")
        self._state.lock()
        # Before the targets: a port in use stops the start, and /readyz says "starting".
        await self.supervision.start()
        keeps = [target.name for target in self.config.targets if target.after_upload.action == "keep"]
        self._journal, aside = SqliteJournal.open_or_set_aside(
            self._state.journal_path, may_set_aside=not keeps, now=self._clock.now()
        )
        if aside is not None:
            log.error(
                "journal_set_aside",
                damaged=str(aside),
                journal=str(self._state.journal_path),
                lost="what files were in flight and what failed and stayed in place; the history of `status`",
                action="a fresh journal was started; files waiting in the drop folders are found again by "
                "the first scan; files that were in flight may be sent twice",
            )
        # A crash (kill -9, power loss) left this daemon's claims behind; only its own.
        recovered = await self._journal.release_claims(self.node, self._clock.now())
        self._markers = FolderMarkers(
            [target.folder for target in self.config.targets],
            await self._journal.journal_id(),
            self.node,
            self._clock,
        )
        for warning in self._markers.claim():
            log.warning("drop_folder_unmarked", problem=warning)
        await self.supervision.seed(self._journal)
        log.info(
            "daemon_starting",
            version=__version__,
            targets=[t.name for t in self.config.targets],
            state_dir=str(self.config.state_dir),
            interrupted_deliveries=recovered,
        )
        self._scheduler.start()
        for settings in self.config.targets:
            service = TargetService(
                settings,
                journal=self._journal,
                scheduler=self._scheduler,
                tokens_dir=self._state.tokens_dir,
                clock=self._clock,
                redactor=self._redactor,
                owner=self.node,
                listener=self._listener,
            )
            self.services.append(service)
            await service.start()
        self._scheduler.every("journal:prune", _DAY, self._prune_journal)
        self._scheduler.every("folders:mark", REFRESH_EVERY, self._refresh_markers)
        self.started.set()
        self._notifier.send("READY=1")
        self.supervision.ready()
        log.info("daemon_started", targets=len(self.services))

    async def main_loop(self) -> None:
        await self._stop_requested.wait()

    async def shutdown(self) -> None:
        self._notifier.send("STOPPING=1")
        self.supervision.stopping()
        grace = self.config.shutdown_grace
        log.info("daemon_stopping", grace=grace)
        self._scheduler.shutdown()
        await asyncio.gather(*(service.stop_watching() for service in self.services))
        # A job under way (a token refresh) and the in-flight uploads share one grace period.
        stopping = asyncio.gather(
            self._scheduler.finish_running(grace), *(service.stop(grace) for service in self.services)
        )
        forced = asyncio.ensure_future(self._forced.wait())
        waiters: list[asyncio.Future[Any]] = [stopping, forced]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if not stopping.done():
            self._scheduler.abort_running()
            for service in self.services:
                service.abort()
        with contextlib.suppress(asyncio.CancelledError):
            await stopping
        forced.cancel()
        # Only now: a refresh that was still running needed the HTTP clients.
        for service in self.services:
            await service.close()
        await self._release()
        log.info("daemon_stopped")

    async def _release(self) -> None:
        """Give back what startup took (also after a failed startup)."""
        self._scheduler.shutdown()
        await asyncio.gather(*(service.stop_watching() for service in self.services))
        if self._markers is not None:
            self._markers.release()
            self._markers = None
        if self._journal is not None:
            # A graceful stop gives its claims back at once (cut-off files are pending).
            with contextlib.suppress(Exception):
                await self._journal.release_claims(self.node, self._clock.now())
            await self._journal.close()
            self._journal = None
        await self.supervision.stop()
        self._state.unlock()
        self._restore_signal_handlers()

    async def _refresh_markers(self) -> None:
        if self._markers is not None:
            self._markers.refresh()

    async def _prune_journal(self) -> None:
        removed = await self.journal.prune(self._clock.now() - self.config.journal.keep_done_for)
        if removed:
            log.info("journal_pruned", rows=removed)

    def _install_signal_handlers(self) -> None:
        if not self._handle_signals:
            return
        loop = asyncio.get_running_loop()
        for signum in _HANDLED_SIGNALS:
            loop.add_signal_handler(signum, self.request_stop, signum)
        self._signal_handlers_installed = True

    def _restore_signal_handlers(self) -> None:
        if not self._handle_signals or not self._signal_handlers_installed:
            return
        self._signal_handlers_installed = False
        loop = asyncio.get_running_loop()
        for signum in _HANDLED_SIGNALS:
            loop.remove_signal_handler(signum)
