"""The daemon's lifecycle: ``startup()`` → ``main_loop()`` → ``shutdown()``.

Signal handlers only set flags. The first SIGTERM/SIGINT stops the watchers and gives
in-flight uploads ``shutdown_grace`` seconds; what is cut off stays pending in the
journal, and the exit code is 0. A second signal cuts them off at once (exit 128+N).
SIGHUP asks for a reload: the main loop reads the config file again and applies what
changed (:mod:`uploader_daemon.reload_plan`), one reload at a time; a config that does
not validate is refused with one error line and the running one stays.
Under systemd (``Type=notify``) the daemon reports READY=1 once every folder is watched,
and RELOADING=1 ... READY=1 around a reload; what it tells Prometheus, probes, systemd's
watchdog and ``status`` is :mod:`uploader_daemon.supervision`'s, started before the
targets and stopped after them.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

from uploader_daemon import __version__
from uploader_daemon.clock import Clock, SystemClock
from uploader_daemon.config.schema import Config, LogSettings, TargetSettings
from uploader_daemon.config.warnings import config_warnings
from uploader_daemon.errors import AdminError, ConfigError
from uploader_daemon.folder_marker import REFRESH_EVERY, FolderMarkers
from uploader_daemon.journal import Journal
from uploader_daemon.journal.opening import open_journal
from uploader_daemon.logs import get_logger
from uploader_daemon.monitor import QUIET, Fanout, Listener
from uploader_daemon.notify import Notifier
from uploader_daemon.redaction import Redactor
from uploader_daemon.reload_plan import ReloadPlan, plan_reload
from uploader_daemon.scheduler import Scheduler
from uploader_daemon.secrets import secret_values
from uploader_daemon.service import TargetService
from uploader_daemon.state import StateDir
from uploader_daemon.supervision import Supervision

log = get_logger(__name__)

_DAY = 86400.0
_HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_RELOAD_SIGNAL = signal.SIGHUP


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
        reload_config: Callable[[], Config] | None = None,
        on_log_change: Callable[[LogSettings], None] | None = None,
    ) -> None:
        """``reload_config`` reads the config file again (raising :class:`ConfigError`);
        without it a reload is refused. ``on_log_change`` applies new ``log:`` settings."""
        self.config = config
        self._redactor = redactor
        self._clock = clock or SystemClock()
        self._handle_signals = handle_signals
        self._notifier = Notifier()
        # This daemon's name on its journal claims (unique in a group sharing one journal).
        self.node = config.journal.node or socket.gethostname()
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
        self._reload_config = reload_config
        self._on_log_change = on_log_change
        self._stop_requested = asyncio.Event()
        self._reload_requested = asyncio.Event()
        self.reloads = 0  # reloads carried out (refused ones included), for whoever waits on one
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

    def request_reload(self, signum: int | None = None) -> None:
        """Ask for the config to be read again; the main loop does it (requests coalesce)."""
        log.info("reload_requested", signal=signal.Signals(signum).name if signum else None)
        self._reload_requested.set()

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
        self._journal, aside = await open_journal(
            self.config.journal,
            sqlite_path=self._state.journal_path,
            node=self.node,
            concurrency=sum(target.concurrency for target in self.config.targets),
            may_set_aside=not keeps,
            now=self._clock.now(),
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
            service = self._new_service(settings)
            self.services.append(service)
            await service.start()
        self._scheduler.every("journal:prune", _DAY, self._prune_journal)
        self._scheduler.every("folders:mark", REFRESH_EVERY, self._refresh_markers)
        self.started.set()
        self._notifier.send("READY=1")
        self.supervision.ready()
        log.info("daemon_started", targets=len(self.services))

    def _new_service(self, settings: TargetSettings) -> TargetService:
        return TargetService(
            settings,
            journal=self.journal,
            scheduler=self._scheduler,
            tokens_dir=self._state.tokens_dir,
            clock=self._clock,
            redactor=self._redactor,
            owner=self.node,
            listener=self._listener,
        )

    async def main_loop(self) -> None:
        """Run until asked to stop, carrying out reloads one at a time in between."""
        stop = asyncio.ensure_future(self._stop_requested.wait())
        try:
            while not self._stop_requested.is_set():
                reload = asyncio.ensure_future(self._reload_requested.wait())
                await asyncio.wait([stop, reload], return_when=asyncio.FIRST_COMPLETED)
                reload.cancel()
                if self._reload_requested.is_set() and not self._stop_requested.is_set():
                    # Cleared first: a SIGHUP during this reload asks for one more afterwards.
                    self._reload_requested.clear()
                    await self.reload()
        finally:
            stop.cancel()

    async def reload(self) -> None:
        """Read the config again and apply it, or refuse it and keep the running one."""
        self._notifier.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        status = "STATUS=config reloaded"
        try:
            new, plan = await self._read_new_config()
            await self._apply(new, plan)
        except ConfigError as error:
            status = f"STATUS=reload refused: {len(error.problems)} problem(s), see the journal"
            log.error(
                "reload_refused",
                config=error.source,
                problems=list(error.problems),
                action="the running config stays in force; fix the file and reload again",
            )
        except Exception as error:  # the daemon goes on with what runs
            status = "STATUS=reload failed, see the journal"
            log.error("reload_failed", error=str(error), error_type=type(error).__name__)
            log.debug("reload_traceback", exc_info=True)
        finally:
            self.reloads += 1
            self._notifier.send("READY=1", status)

    async def _read_new_config(self) -> tuple[Config, ReloadPlan]:
        """The config file as it is now, and what taking it would change.

        Raises :class:`ConfigError` for a config that does not validate, or one whose
        changes need a restart.
        """
        if self._reload_config is None:
            raise ConfigError("the daemon", ["was started without a config file; restart it instead"])
        new = await asyncio.to_thread(self._reload_config)
        plan = plan_reload(self.config, new, {s.settings.name: s.settings for s in self.services})
        if plan.refused:
            raise ConfigError("the new config", plan.refused)
        return new, plan

    async def _apply(self, new: Config, plan: ReloadPlan) -> None:
        # The new secrets are redacted before anything of the new config can be logged.
        for secret in secret_values(new):
            self._redactor.add(secret)
        if plan.logging_changed and self._on_log_change is not None:
            self._on_log_change(new.log)
        for note in plan.notes:
            log.warning("reload_needs_restart", setting=note)
        leaving = [service for service in self.services if service.settings.name in plan.stop]
        if leaving:
            log.info("targets_stopping", targets=[service.settings.name for service in leaving])
        await asyncio.gather(*(self._stop_service(service) for service in leaving))
        kept = {s.settings.name: s for s in self.services if s not in leaving}
        self.supervision.reconfigure(new)
        for settings in new.targets:
            if settings.name in plan.start and not self._stop_requested.is_set():
                service = await self._start_service(settings)
                if service is not None:
                    kept[settings.name] = service
        self.services = [kept[target.name] for target in new.targets if target.name in kept]
        self.config = new
        log.info(
            "config_reloaded",
            added=list(plan.added),
            removed=list(plan.removed),
            changed=list(plan.changed),
            unchanged=list(plan.unchanged),
            restarted_for_logging=plan.logging_changed,
            running=[service.settings.name for service in self.services],
        )

    async def _stop_service(self, service: TargetService) -> None:
        """Stop one target as a shutdown would: in-flight deliveries get ``shutdown_grace``."""
        await service.stop_watching()
        await service.stop(self.config.shutdown_grace)
        await service.close()
        still_watched = {other.settings.folder for other in self.services if other is not service}
        if self._markers is not None and service.settings.folder not in still_watched:
            self._markers.remove(service.settings.folder)

    async def _start_service(self, settings: TargetSettings) -> TargetService | None:
        """Start one target; a target that cannot start is logged and left out (the next
        reload tries it again), the others run on."""
        service = self._new_service(settings)
        try:
            if self._markers is not None:
                for warning in self._markers.add(settings.folder):
                    log.warning("drop_folder_unmarked", problem=warning)
            await service.start()
        except (AdminError, OSError) as error:
            log.error(
                "target_not_started",
                target=settings.name,
                error=str(error),
                action="the other targets run on; fix it and reload again",
            )
            await self._stop_service(service)
            return None
        return service

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
        loop.add_signal_handler(_RELOAD_SIGNAL, self.request_reload, _RELOAD_SIGNAL)
        self._signal_handlers_installed = True

    def _restore_signal_handlers(self) -> None:
        if not self._handle_signals or not self._signal_handlers_installed:
            return
        self._signal_handlers_installed = False
        loop = asyncio.get_running_loop()
        for signum in (*_HANDLED_SIGNALS, _RELOAD_SIGNAL):
            loop.remove_signal_handler(signum)
