"""Alert hooks: admin programs run when a file is parked or the API stays down.

``targets[].hooks`` (:class:`~uploader_daemon.config.operations.HookSettings`):

- ``on_failure`` runs once per file given up on (moved to ``failed_dir``, or left in
  place when it could not be moved);
- ``on_outage`` runs once an outage (no answer, 429/502/503/504, a failed or refused
  login) has lasted ``outage_after``, counted from its first failure, and once more when
  that outage ends, with ``UPLOADER_RESOLVED=1``. An outage shorter than
  ``outage_after`` runs nothing.

A hook is an argv list run without a shell, from ``/``, with stdin closed, in a process
group of its own; its arguments may use ``{target.name}``, ``{target.folder}`` and, for
``on_failure``, ``{file.name}``, ``{file.relative_path}``, ``{file.failed_path}``. What it
is told is in its environment (``UPLOADER_*``, see :func:`failure_environment` and
:func:`outage_environment`), the daemon's own environment less systemd's notify and
watchdog variables (a hook must never be able to report the daemon alive).

A hook never delays or changes a delivery: the event starts it as a task and returns.
One still running after ``timeout`` is killed with its whole process group; a hook that
fails, hangs or cannot start is logged (with the start of its output) and that is all.
At most :data:`MAX_RUNNING` hooks of a target run at once; the others wait their turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping
from pathlib import PurePosixPath

from uploader_daemon.clock import Clock, iso_utc
from uploader_daemon.config.schema import TargetSettings
from uploader_daemon.logs import get_logger
from uploader_daemon.monitor import Outcome, TargetEvents
from uploader_daemon.templating import TemplateError, render_text

log = get_logger(__name__)

MAX_RUNNING = 4
# What is quoted of a failed hook's output in its log line.
OUTPUT_EXCERPT = 500
# A hook told to stop (SIGTERM) that is still there after this is killed (SIGKILL).
KILL_AFTER = 1.0
# systemd's: a hook with these could send READY=1 or WATCHDOG=1 on the daemon's behalf.
_NOT_INHERITED = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def hook_environment(base: Mapping[str, str], values: Mapping[str, str]) -> dict[str, str]:
    """The daemon's environment without systemd's notify variables, plus ``values``."""
    environment = {name: value for name, value in base.items() if name not in _NOT_INHERITED}
    environment.update(values)
    return environment


def failure_environment(target: str, path: str, failed_path: str | None, reason: str) -> dict[str, str]:
    """What ``on_failure`` is told: the target, the file, where it went and why."""
    return {
        "UPLOADER_HOOK": "on_failure",
        "UPLOADER_TARGET": target,
        "UPLOADER_FILE": path,
        "UPLOADER_FAILED_PATH": failed_path or "",
        "UPLOADER_REASON": reason,
    }


def outage_environment(
    target: str, reason: str, since: float, down_for: float, *, resolved: bool
) -> dict[str, str]:
    """What ``on_outage`` is told: the target, why, since when and for how long."""
    values = {
        "UPLOADER_HOOK": "on_outage",
        "UPLOADER_TARGET": target,
        "UPLOADER_REASON": reason,
        "UPLOADER_SINCE": iso_utc(since),
        "UPLOADER_DOWN_FOR": str(round(down_for)),
    }
    if resolved:
        values["UPLOADER_RESOLVED"] = "1"
    return values


class TargetHooks:
    """One target's hooks, listening to that target's events (see the module docstring)."""

    def __init__(
        self, target: TargetSettings, clock: Clock, environ: Mapping[str, str] | None = None
    ) -> None:
        self._name = target.name
        self._folder = str(target.folder)
        self._settings = target.hooks
        self._clock = clock
        self._environ = os.environ if environ is None else environ
        self._running: set[asyncio.Task[None]] = set()
        self._processes: set[asyncio.subprocess.Process] = set()
        self._slots = asyncio.Semaphore(MAX_RUNNING)
        self._outage_timer: asyncio.TimerHandle | None = None
        self._outage: tuple[str, float] | None = None  # reason, since (wall time)
        self._outage_alerted = False
        self._closed = False
        self._log = log.bind(target=target.name)

    @property
    def configured(self) -> bool:
        return self._settings.on_failure is not None or self._settings.on_outage is not None

    # --- the events ------------------------------------------------------------------

    def target(self, name: str) -> TargetEvents:
        """As a :class:`~uploader_daemon.monitor.Listener`: these hooks are for one target."""
        return self

    def file_parked(self, path: str, failed_path: str | None, reason: str) -> None:
        argv = self._settings.on_failure
        if argv is None or self._closed:
            return
        file_values = {
            "name": PurePosixPath(path).name,
            "relative_path": path,
            "failed_path": failed_path or "",
        }
        environment = failure_environment(self._name, path, failed_path, reason)
        self._start("on_failure", argv, {"file": file_values}, environment)

    def api_down(self, reason: str, since: float) -> None:
        if self._settings.on_outage is None or self._closed:
            return
        self._cancel_outage_timer()
        self._outage = (reason, since)
        self._outage_alerted = False
        delay = max(0.0, since + self._settings.outage_after - self._clock.now())
        self._outage_timer = asyncio.get_running_loop().call_later(delay, self._outage_lasted)

    def api_up(self, down_for: float) -> None:
        self._cancel_outage_timer()
        outage, alerted = self._outage, self._outage_alerted
        self._outage, self._outage_alerted = None, False
        argv = self._settings.on_outage
        if argv is None or outage is None or not alerted or self._closed:
            return  # no alert went out for this outage, so none says it is over
        reason, since = outage
        environment = outage_environment(self._name, reason, since, down_for, resolved=True)
        self._start("on_outage", argv, {}, environment)

    def request_answered(self, step: str, status: int | None) -> None:
        return None

    def file_delivered(self, path: str, size: int, seconds: float | None) -> None:
        return None

    def login_finished(self, outcome: Outcome) -> None:
        return None

    def refresh_finished(self, outcome: Outcome) -> None:
        return None

    # --- stopping --------------------------------------------------------------------

    async def close(self, grace: float) -> None:
        """Start no more hooks; give running ones ``grace`` seconds, then kill them."""
        self._closed = True
        self._cancel_outage_timer()
        if not self._running:
            return
        _, late = await asyncio.wait(list(self._running), timeout=grace)
        if late:
            self.abort()
            await asyncio.gather(*late, return_exceptions=True)

    def abort(self) -> None:
        """Kill every running hook now (a second stop signal)."""
        self._closed = True
        self._cancel_outage_timer()
        for process in list(self._processes):
            _signal_group(process, signal.SIGKILL)

    # --- running ---------------------------------------------------------------------

    def _outage_lasted(self) -> None:
        self._outage_timer = None
        argv = self._settings.on_outage
        if self._outage is None or argv is None or self._closed:
            return
        reason, since = self._outage
        self._outage_alerted = True
        down_for = self._clock.now() - since
        environment = outage_environment(self._name, reason, since, down_for, resolved=False)
        self._start("on_outage", argv, {}, environment)

    def _cancel_outage_timer(self) -> None:
        if self._outage_timer is not None:
            self._outage_timer.cancel()
            self._outage_timer = None

    def _start(
        self,
        hook: str,
        argv: tuple[str, ...],
        values: Mapping[str, Mapping[str, str]],
        environment: Mapping[str, str],
    ) -> None:
        template_values = {"target": {"name": self._name, "folder": self._folder}, **values}
        try:
            command = [render_text(argument, template_values) for argument in argv]
        except TemplateError as error:  # refused at load time; kept as a net
            self._log.error("hook_not_started", hook=hook, error=str(error))
            return
        task = asyncio.get_running_loop().create_task(
            self._run(hook, command, hook_environment(self._environ, environment)),
            name=f"{self._name}-{hook}",
        )
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, hook: str, command: list[str], environment: dict[str, str]) -> None:
        """Run one hook to its end or its timeout; never raises."""
        try:
            async with self._slots:
                await self._run_process(hook, command, environment)
        except Exception as error:  # a hook must never take anything down with it
            self._log.error("hook_error", hook=hook, error=str(error), error_type=type(error).__name__)
            self._log.debug("hook_traceback", hook=hook, exc_info=True)

    async def _run_process(self, hook: str, command: list[str], environment: dict[str, str]) -> None:
        timeout = self._settings.timeout
        started = self._clock.monotonic()
        try:
            process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=environment,
                cwd="/",
                start_new_session=True,  # its own process group, so a timeout kills all of it
            )
        except OSError as error:
            self._log.error(
                "hook_not_started",
                hook=hook,
                program=command[0],
                error=error.strerror or str(error),
                hint="check that the program exists and is executable by the daemon's user",
            )
            return
        self._processes.add(process)
        try:
            output, _ = await asyncio.wait_for(process.communicate(), timeout)
        except TimeoutError:
            await _stop(process)
            self._log.error(
                "hook_timed_out",
                hook=hook,
                program=command[0],
                timeout=timeout,
                action="killed with its process group; raise hooks.timeout if it needs longer",
            )
            return
        except asyncio.CancelledError:
            await _stop(process)
            raise
        finally:
            self._processes.discard(process)
        seconds = round(self._clock.monotonic() - started, 3)
        text = output.decode("utf-8", errors="replace").strip()
        if process.returncode == 0:
            self._log.info("hook_ran", hook=hook, program=command[0], seconds=seconds)
            if text:
                self._log.debug("hook_output", hook=hook, output=text[:OUTPUT_EXCERPT])
            return
        self._log.error(
            "hook_failed",
            hook=hook,
            program=command[0],
            exit_code=process.returncode,
            output=text[:OUTPUT_EXCERPT] or None,
            seconds=seconds,
        )


async def _stop(process: asyncio.subprocess.Process) -> None:
    """End a hook and everything it started: SIGTERM to its group, SIGKILL if it lingers."""
    _signal_group(process, signal.SIGTERM)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(process.wait(), KILL_AFTER)
    # The leader may be gone while its children still hold the group: kill what is left.
    _signal_group(process, signal.SIGKILL)
    await process.wait()


def _signal_group(process: asyncio.subprocess.Process, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)
