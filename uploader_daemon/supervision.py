"""What the daemon tells those who watch it: Prometheus, probes, systemd, ``status``.

One object, built by the daemon, started before the targets and stopped after them:

- the metrics (:mod:`uploader_daemon.metrics`) and the endpoint of ``metrics.listen``
  (:mod:`uploader_daemon.endpoint`): ``/metrics``; ``/healthz``, 200 while the event loop
  runs (it is served by that loop); ``/readyz``, 200 once every folder is watched and the
  journal is writable, else 503 with a JSON body naming what is not;
- ``WATCHDOG=1`` from the event loop at half the interval systemd asks for (nothing when
  it asks none), so a wedged loop misses its pings and systemd restarts the daemon;
- ``STATUS=`` lines (``reports: 3 pending, last delivery 12 s ago; scans: 0 pending, API
  down for 4 min``), sent when the text changes, at most every :data:`STATUS_EVERY` s;
- ``state_dir/present.json`` (:mod:`uploader_daemon.present`) for ``status``, written
  when the present state changes, at most every :data:`WRITE_EVERY` s.

Nothing here polls an idle daemon: the report loop runs while files are scheduled or the
API is down, and otherwise sleeps until an event wakes it (or, under systemd, until the
``STATUS=`` text's "12 s ago" would read differently: every minute, then every hour).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from uploader_daemon.clock import Clock
from uploader_daemon.config.schema import Config, TargetSettings
from uploader_daemon.config.upload import ApiStep
from uploader_daemon.endpoint import Endpoint, Reply, Request, Route
from uploader_daemon.journal import FileState, Journal
from uploader_daemon.logs import get_logger
from uploader_daemon.metrics import LiveTarget, Metrics
from uploader_daemon.monitor import Fanout, Listener, Outcome, TargetEvents
from uploader_daemon.notify import Notifier
from uploader_daemon.present import (
    CredentialState,
    DaemonPresent,
    PresentFile,
    TargetPresent,
    TargetRecorder,
    TargetSnapshot,
    target_present,
)

log = get_logger(__name__)

STATUS_EVERY = 2.0
WRITE_EVERY = 1.0
_BUSY_TICK = 1.0  # while files move or the API is down: how often the present is looked at
_STATUS_TARGETS = 8  # a STATUS= line names this many targets at most


class Supervised(Protocol):
    """A target as seen from here (``TargetService``)."""

    def snapshot(self) -> TargetSnapshot: ...


class Supervision:
    """Metrics, health, watchdog, ``STATUS=`` and ``present.json`` for one daemon."""

    def __init__(
        self,
        config: Config,
        *,
        node: str,
        clock: Clock,
        notifier: Notifier,
        services: Callable[[], Sequence[Supervised]],
        journal_path: Path,
    ) -> None:
        self._config = config
        self._node = node
        self._clock = clock
        self._notifier = notifier
        self._services = services
        self._journal_path = journal_path
        self._journal: Journal | None = None  # known from seed() on
        self._recorders = {
            target.name: TargetRecorder(clock, _credential_steps(target)) for target in config.targets
        }
        self._wake = asyncio.Event()
        self.metrics = Metrics(node, self._recorders, self.live) if config.metrics is not None else None
        listeners: list[Listener] = [_Recorders(self._recorders, self._wake)]
        if self.metrics is not None:
            listeners.append(self.metrics)
        self.listener: Listener = Fanout(listeners)
        self.endpoint: Endpoint | None = None
        if config.metrics is not None:
            routes: dict[str, Route] = {
                "/metrics": self._metrics_route,
                "/healthz": _healthz,
                "/readyz": self._readyz,
            }
            self.endpoint = Endpoint(config.metrics.host, config.metrics.port, routes)
        self._present_file = PresentFile(config.state_dir)
        self._started_at = clock.now()
        self._ready = False
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = asyncio.Event()
        self._written: DaemonPresent | None = None
        self._written_at = -float("inf")
        self._write_warned = False
        self._status_sent: str | None = None
        self._status_sent_at = -float("inf")

    # --- lifecycle -------------------------------------------------------------------

    def reconfigure(self, config: Config) -> None:
        """A reload changed the targets: record the new ones, forget the removed ones.

        The counters of a target that stays keep counting (they are this process's).
        """
        self._config = config
        names = {target.name for target in config.targets}
        for name in [name for name in self._recorders if name not in names]:
            del self._recorders[name]
        for target in config.targets:
            if target.name not in self._recorders:
                self._recorders[target.name] = TargetRecorder(self._clock, _credential_steps(target))

    async def start(self) -> None:
        """Listen (raises :class:`~uploader_daemon.endpoint.ListenError`), start pinging systemd."""
        if self.endpoint is not None:
            await self.endpoint.start()
        interval = self._notifier.watchdog_interval()
        if interval is not None:
            log.info("watchdog_enabled", ping_every=round(interval, 3))
            self._tasks.append(asyncio.create_task(self._ping(interval), name="watchdog"))

    async def seed(self, journal: Journal) -> None:
        """The last delivery each target's journal knows of (a gauge is true after a restart too)."""
        self._journal = journal
        for name, recorder in self._recorders.items():
            try:
                last = await journal.records(name, (FileState.DONE,), limit=1)
            except Exception as error:  # a gauge is not worth a failed start
                log.warning("last_delivery_unknown", target=name, error=str(error))
                continue
            if last and recorder.last_delivery_at is None:
                recorder.last_delivery_at = last[0].updated_at

    def ready(self) -> None:
        """Every folder is watched: ``/readyz`` may say so; the report loop starts."""
        self._ready = True
        self._tasks.append(asyncio.create_task(self._report(), name="present-report"))

    def stopping(self) -> None:
        """The daemon is shutting down: ``/readyz`` answers 503 from now on."""
        self._stopping = True
        self._wake.set()

    async def stop(self) -> None:
        """Stop the loops, record that the daemon stopped, close the endpoint."""
        self._stopping = True
        self._stopped.set()
        self._wake.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._ready:
            await self._write(self._present(running=False))
        if self.endpoint is not None:
            await self.endpoint.stop()

    # --- the live state --------------------------------------------------------------

    def live(self) -> list[LiveTarget]:
        """Every started target's snapshot with its recorder (read on the loop)."""
        targets = []
        for service in self._services():
            snapshot = service.snapshot()
            recorder = self._recorders.get(snapshot.name)
            if recorder is not None:
                targets.append(LiveTarget(snapshot, recorder))
        return targets

    def _present(self, *, running: bool, live: Sequence[LiveTarget] | None = None) -> DaemonPresent:
        now = self._clock.now()
        targets = live if live is not None else self.live()
        return DaemonPresent(
            node=self._node,
            pid=os.getpid(),
            started_at=self._started_at,
            written_at=now,
            running=running,
            targets=tuple(target_present(t.snapshot, t.recorder, now) for t in targets),
        )

    # --- the endpoint's routes -------------------------------------------------------

    def _metrics_route(self, request: Request) -> Reply:
        assert self.metrics is not None
        body, content_type = self.metrics.render(request.headers.get("accept", ""))
        return Reply(200, body, content_type)

    def _readyz(self, request: Request) -> Reply:
        problems = self.not_ready()
        body = {"ready": not problems, "not_ready": problems}
        return Reply(200 if not problems else 503, json.dumps(body).encode() + b"\n", "application/json")

    def not_ready(self) -> list[str]:
        """What keeps the daemon from being ready, one sentence each (empty: ready)."""
        if self._stopping:
            return ["the daemon is stopping"]
        watching = {t.snapshot.name for t in self.live() if t.snapshot.watching}
        problems = [
            f"target {target.name}: its folder is not watched yet"
            if not self._ready
            else f"target {target.name}: its folder is not watched"
            for target in self._config.targets
            if target.name not in watching
        ]
        if self._ready:
            if self._journal is not None and self._config.journal.backend != "sqlite":
                journal = self._journal.unreachable()
            else:
                journal = writable_problem(self._journal_path)
            if journal is not None:
                problems.append(f"journal: {journal}")
        elif not problems:
            problems.append("the daemon is starting")
        return problems

    # --- systemd ---------------------------------------------------------------------

    async def _ping(self, interval: float) -> None:
        """``WATCHDOG=1`` from the loop itself: a wedged loop sends nothing."""
        while not self._stopped.is_set():
            self._notifier.send("WATCHDOG=1")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), interval)

    # --- the report loop -------------------------------------------------------------

    async def _report(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopped.is_set():
            self._wake.clear()
            delay: float | None = None
            try:
                delay = await self._report_once(loop.time())
            except Exception as error:  # the report must never end: log, look again later
                log.error("present_report_failed", error=str(error), error_type=type(error).__name__)
                log.debug("present_report_traceback", exc_info=True)
                delay = STATUS_EVERY
            # One look per WRITE_EVERY at most, however many events came: on a busy daemon
            # an event costs the setting of a flag, not a report.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), WRITE_EVERY)
            if delay is None or delay > WRITE_EVERY:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), None if delay is None else delay - WRITE_EVERY)

    async def _report_once(self, now: float) -> float | None:
        """Write and send what changed; returns how long until the next look (None: an event)."""
        live = self.live()
        present = self._present(running=True, live=live)
        delays: list[float] = []
        if self._written is None or present.without_time() != self._written.without_time():
            wait = self._written_at + WRITE_EVERY - now
            if wait <= 0:
                await self._write(present)
                self._written_at = now
            else:
                delays.append(wait)
        if any(t.scheduled or not t.api_up for t in present.targets):
            delays.append(_BUSY_TICK)
        if self._notifier.enabled:
            text, changes_in = status_line(present.targets, present.written_at)
            if self._stopping:
                text = "stopping: " + text
            if text != self._status_sent:
                wait = self._status_sent_at + STATUS_EVERY - now
                if wait <= 0:
                    self._notifier.send(f"STATUS={text}")
                    self._status_sent, self._status_sent_at = text, now
                    delays.append(changes_in)
                else:
                    delays.append(wait)
            else:
                delays.append(changes_in)
        return min(delays) if delays else None

    async def _write(self, present: DaemonPresent) -> None:
        try:
            await asyncio.to_thread(self._present_file.write, present)
        except OSError as error:
            if not self._write_warned:
                self._write_warned = True
                log.warning(
                    "present_state_unwritten",
                    path=str(self._present_file.path),
                    error=error.strerror or str(error),
                    hint="`status` shows the journal only until this file can be written; check state_dir",
                )
            return
        self._written = present
        self._write_warned = False


class _Recorders:
    """The recorders as a listener; every event wakes the report loop."""

    def __init__(self, recorders: dict[str, TargetRecorder], wake: asyncio.Event) -> None:
        self._recorders = recorders
        self._wake = wake

    def target(self, name: str) -> TargetEvents:
        return _Waking(self._recorders[name], self._wake)


class _Waking:
    def __init__(self, recorder: TargetRecorder, wake: asyncio.Event) -> None:
        self._recorder = recorder
        self._wake = wake

    def request_answered(self, step: str, status: int | None) -> None:
        self._recorder.request_answered(step, status)
        self._wake.set()

    def file_delivered(self, path: str, size: int, seconds: float | None) -> None:
        self._recorder.file_delivered(path, size, seconds)
        self._wake.set()

    def file_parked(self, path: str, failed_path: str | None, reason: str) -> None:
        self._recorder.file_parked(path, failed_path, reason)
        self._wake.set()

    def login_finished(self, outcome: Outcome) -> None:
        self._recorder.login_finished(outcome)
        self._wake.set()

    def refresh_finished(self, outcome: Outcome) -> None:
        self._recorder.refresh_finished(outcome)
        self._wake.set()

    def api_down(self, reason: str, since: float) -> None:
        self._wake.set()

    def api_up(self, down_for: float) -> None:
        self._wake.set()


def _healthz(request: Request) -> Reply:
    return Reply(200, b"ok\n")


def _credential_steps(target: TargetSettings) -> set[str]:
    return {step.name for step in target.steps if isinstance(step, ApiStep) and step.credential}


def writable_problem(path: Path) -> str | None:
    """Why the journal at ``path`` could not be written now, or ``None`` (a few syscalls)."""
    folder = path.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"{folder} is not writable by the daemon's user"
    if path.exists() and not os.access(path, os.W_OK):
        return f"{path} is not writable by the daemon's user"
    try:
        free = os.statvfs(folder)
    except OSError as error:
        return f"cannot check {folder}: {error.strerror}"
    if free.f_bavail == 0:
        return f"the filesystem of {folder} is full"
    return None


# --- the STATUS= line ----------------------------------------------------------------


def status_line(targets: Sequence[TargetPresent], now: float) -> tuple[str, float]:
    """``STATUS=`` text for the targets, and the seconds until its relative times change."""
    parts: list[str] = []
    changes_in = float("inf")
    for target in targets[:_STATUS_TARGETS]:
        words = [
            f"{target.scheduled} pending" + (f" ({target.in_flight} uploading)" if target.in_flight else "")
        ]
        problem_since = target.credential_since
        if target.credential is CredentialState.LOGIN_REFUSED and problem_since is not None:
            text, change = _ago(now - problem_since)
            words.append(f"login refused for {text}")
            changes_in = min(changes_in, change)
        elif target.credential is CredentialState.API_UNREACHABLE and problem_since is not None:
            text, change = _ago(now - problem_since)
            words.append(f"API down for {text}")
            changes_in = min(changes_in, change)
        elif target.credential is CredentialState.TOKEN_REFUSED:
            words.append("token refused")
        if target.last_delivery_at is not None:
            text, change = _ago(now - target.last_delivery_at)
            words.append(f"last delivery {text} ago")
            changes_in = min(changes_in, change)
        else:
            words.append("no delivery yet")
        parts.append(f"{target.name}: " + ", ".join(words))
    if len(targets) > _STATUS_TARGETS:
        parts.append(f"and {len(targets) - _STATUS_TARGETS} more targets")
    return "; ".join(parts), max(changes_in, STATUS_EVERY)


def _ago(seconds: float) -> tuple[str, float]:
    """``12 s``/``4 min``/``2 h``/``3 d``, and the seconds until that text changes."""
    seconds = max(0.0, seconds)
    for unit, size, limit in (("s", 1, 60), ("min", 60, 3600), ("h", 3600, 86400), ("d", 86400, None)):
        if limit is None or seconds < limit:
            return f"{int(seconds // size)} {unit}", size - seconds % size
    raise AssertionError("unreachable")  # pragma: no cover
