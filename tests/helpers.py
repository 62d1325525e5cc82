"""Test helpers: waiting on conditions with deadlines, running the real daemon, building configs.

Nothing here sleeps to wait for something: :func:`wait_until` re-checks a condition
until a deadline, and the daemon runners wait on events. :class:`ConfigYaml` builds a
whole daemon config as a mapping and dumps it with ``yaml.safe_dump``, so no test
writes (or quotes) YAML by hand unless the YAML itself is what it tests.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import os
import signal
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import KW_ONLY, dataclass
from pathlib import Path
from typing import Any

import yaml

from uploader_daemon.auth.base import AuthHeaders
from uploader_daemon.clock import Clock
from uploader_daemon.config import Config, parse_config
from uploader_daemon.daemon import Daemon
from uploader_daemon.identity import FileIdentity
from uploader_daemon.journal import Claim, Disposition, FileRecord, SqliteJournal, TargetCounts
from uploader_daemon.redaction import Redactor
from uploader_daemon.secrets import secret_values

DEFAULT_TIMEOUT = 15.0
OWNER = "this-node"  # the node name test journals' claims carry
_POLL = 0.01


@functools.cache
def tls() -> ssl.SSLContext:
    """One TLS context for every test client: building one per client is slow."""
    return ssl.create_default_context()


def unsigned_jwt(claims: dict[str, object]) -> str:
    """A JWT-shaped token built by hand: ``header.payload.`` with no signature."""

    def part(value: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


class RecordingCredential:
    """A fixed credential that counts how often it was asked for and keeps what was refused."""

    check_every = None
    expires_at = None

    def __init__(self, headers: Mapping[str, str] | None = None, generation: int = 7) -> None:
        self.sent = AuthHeaders(dict(headers or {"Authorization": "Bearer t0k3n-value"}), generation)
        self.asked = 0
        self.rejections: list[AuthHeaders] = []

    def start(self) -> None:
        """Nothing is stored."""

    async def headers(self) -> AuthHeaders:
        self.asked += 1
        return self.sent

    def rejected(self, used: AuthHeaders) -> None:
        self.rejections.append(used)

    async def renew_if_due(self) -> None:
        """Never expires."""


class RecordingTimer:
    """A credential's renewal timer that records when each one-off check would run."""

    def __init__(self, due: list[float] | None = None) -> None:
        self.due = due if due is not None else []
        self.intervals: dict[str, float] = {}

    def every(self, job_id: str, seconds: float, job: Callable[[], Any]) -> None:
        self.intervals[job_id] = seconds

    def at(self, job_id: str, when: float, job: Callable[[], Any]) -> None:
        self.due.append(when)


class FakeClock:
    """Wall time that moves only when a test says so.

    Thread-safe, since the daemon's loop thread and the emulator read it; also a plain
    callable for ``EmulatorSettings(clock=...)``.
    """

    def __init__(self, start: float | None = None) -> None:
        self._now = time.time() if start is None else start
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    # A clock that never jumps back: the fake one moves only forward, with advance().
    monotonic = now
    __call__ = now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


def wait_until(condition: Callable[[], object], timeout: float = DEFAULT_TIMEOUT, message: str = "") -> None:
    """Re-check ``condition`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message or condition}")
        pause.wait(_POLL)


def write_config(path: Path, text: str, **values: object) -> Path:
    """Write a dedented YAML config, filling ``{placeholders}`` from ``values``."""
    path.write_text(textwrap.dedent(text).format(**values), encoding="utf-8")
    return path


def load(text: str, environ: Mapping[str, str] | None = None, **values: object) -> Config:
    """Parse an inline dedented YAML config (``{placeholders}`` filled from ``values``)."""
    return parse_config(textwrap.dedent(text).format(**values), "test config", dict(environ or {}))


Snippet = Mapping[str, Any] | str
"""A part of a config: a mapping, or the YAML text of one (``"{type: none}"``)."""

# The emulator's token API (flow T): the login the token tests use and its multipart upload.
EMULATOR_LOGIN: Mapping[str, Any] = {
    "path": "/auth/login",
    "username": "uploader",
    "password": {"env": "UPLOADER_PASSWORD"},
}
ENVIO_UPLOAD: Mapping[str, Any] = {"type": "multipart", "path": "/api/envio", "file_field": "file"}


def mapping_of(snippet: Snippet | None) -> dict[str, Any]:
    """A snippet as a plain dict: a mapping copied, YAML text parsed; ``None`` and ``""`` are empty.

    Raises ``TypeError`` when the YAML text is not a mapping.
    """
    if snippet is None:
        return {}
    if not isinstance(snippet, str):
        return dict(snippet)
    parsed = yaml.safe_load(snippet)
    if parsed is None:
        return {}
    if not isinstance(parsed, dict):
        raise TypeError(f"a config snippet must be a YAML mapping, not {snippet!r}")
    return parsed


def token_auth(login: Snippet = EMULATOR_LOGIN, **settings: Any) -> dict[str, Any]:
    """``auth: {type: token}`` logging in with ``login``; ``settings`` add ``refresh``, ``header``..."""
    return {"type": "token", "login": mapping_of(login), **settings}


def _plain(value: object) -> object:
    """``value`` as ``yaml.safe_dump`` can write it: mappings as dicts, paths as strings, tuples as lists."""
    if isinstance(value, Mapping):
        return _plain_mapping(value)
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _plain_mapping(mapping: Mapping[str, Any]) -> dict[str, Any]:
    return {key: _plain(value) for key, value in mapping.items()}


def _without_none(mapping: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in mapping.items() if value is not None}


@dataclass(frozen=True)
class Retry:
    """A target's ``retry`` mapping; a field left ``None`` is not written (the daemon's default)."""

    attempts: int | None = None
    backoff: str | None = None
    max_backoff: str | None = None


@dataclass(frozen=True)
class ConfigYaml:
    """A whole daemon config with one target, built as a mapping and dumped with ``yaml.safe_dump``.

    ``folders`` is the ``folders`` fixture's layout: ``state`` (state_dir), ``drop`` (the
    target's folder), ``failed`` (failed_dir) and ``sent`` (the archive, unless
    ``after_upload`` says otherwise). Every keyword is one key of the target or of the
    top level; ``None`` leaves the key out, so the daemon's default applies. Secrets
    such as ``{"env": "NAME"}`` are plain nested mappings; paths may be ``Path``.
    Derive a variant with ``dataclasses.replace``.
    """

    folders: Mapping[str, Path]
    name: str
    base_url: str
    _: KW_ONLY
    # Test files arrive closed, so no settle wait is needed before they are picked up.
    settle: str | None = "0s"
    concurrency: int | None = None
    # Pickup is proven through events; an hourly rescan never fires during a test.
    watch: Snippet | None = "{rescan_every: 1h}"
    retry: Retry | None = None
    # None archives into folders["sent"]: the key is required, so there is no leaving it out.
    after_upload: Snippet | None = None
    api_timeout: str | None = None
    auth: Snippet = "{type: none}"
    upload: Snippet = "{type: multipart}"
    # More keys of the target (include, recursive...), written after the others.
    extra: Snippet | None = None
    log: Snippet | None = None
    shutdown_grace: str | None = None
    # The top-level ``journal`` mapping (backend, dsn, lease, node); None: the SQLite default.
    journal: Snippet | None = None
    # Whole target mappings after the first (another builder's ``target()``, say).
    extra_targets: Sequence[Snippet] = ()

    def target(self) -> dict[str, Any]:
        """The first target's mapping."""
        after_upload = self.after_upload
        if after_upload is None:
            after_upload = {"action": "archive", "archive_dir": self.folders["sent"]}
        target = _without_none(
            {
                "name": self.name,
                "folder": self.folders["drop"],
                "settle": self.settle,
                "concurrency": self.concurrency,
                "watch": None if self.watch is None else mapping_of(self.watch),
                "retry": None if self.retry is None else _without_none(vars(self.retry)),
                "after_upload": mapping_of(after_upload),
                "failed_dir": self.folders["failed"],
                "api": _without_none({"base_url": self.base_url, "timeout": self.api_timeout}),
                "auth": mapping_of(self.auth),
                "upload": mapping_of(self.upload),
            }
        )
        return _plain_mapping(target | mapping_of(self.extra))

    def data(self) -> dict[str, Any]:
        """The whole config as the mapping the YAML file holds."""
        config = _without_none(
            {
                "state_dir": self.folders["state"],
                "log": None if self.log is None else mapping_of(self.log),
                "shutdown_grace": self.shutdown_grace,
                "journal": None if self.journal is None else mapping_of(self.journal),
                "targets": [self.target(), *(mapping_of(target) for target in self.extra_targets)],
            }
        )
        return _plain_mapping(config)

    def text(self) -> str:
        """The config as YAML text."""
        return yaml.safe_dump(self.data(), sort_keys=False)

    def load(self, environ: Mapping[str, str] | None = None) -> Config:
        """The parsed config; ``environ`` supplies ``{env: NAME}`` secrets. Raises ``ConfigError``."""
        # Not load(): it fills {placeholders}, and the dumped text holds literal braces ("Bearer {token}").
        return parse_config(self.text(), "test config", dict(environ or {}))

    def write(self, path: Path) -> Path:
        """Write the YAML to ``path`` (for ``DaemonProcess`` and the CLI) and return ``path``."""
        path.write_text(self.text(), encoding="utf-8")
        return path


class DaemonThread:
    """The real daemon, in-process, on its own event loop in a background thread."""

    def __init__(self, config: Config, clock: Clock | None = None) -> None:
        self.config = config
        self.redactor = Redactor(secret_values(config))
        self._clock = clock
        self.daemon: Daemon | None = None
        self.exit_code: int | None = None
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._main, name="daemon", daemon=True)

    def start(self, timeout: float = DEFAULT_TIMEOUT) -> DaemonThread:
        self._thread.start()
        if not self._started.wait(timeout):
            raise AssertionError("the daemon did not start in time")
        if self.error is not None:
            raise self.error
        return self

    def stop(self, timeout: float = DEFAULT_TIMEOUT) -> int | None:
        loop, daemon = self._loop, self.daemon
        if loop is not None and daemon is not None and self._thread.is_alive():
            loop.call_soon_threadsafe(daemon.request_stop)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError("the daemon did not stop in time")
        if self.error is not None:
            raise self.error
        return self.exit_code

    def call(self, function: Callable[[], Any], timeout: float = DEFAULT_TIMEOUT) -> Any:
        """Run ``function`` on the daemon's loop thread and return its result."""
        assert self._loop is not None
        result: dict[str, Any] = {}
        done = threading.Event()

        def run() -> None:
            try:
                result["value"] = function()
            except BaseException as error:  # handed to the test thread
                result["error"] = error
            finally:
                done.set()

        self._loop.call_soon_threadsafe(run)
        if not done.wait(timeout):
            raise AssertionError("the daemon loop did not answer in time")
        if "error" in result:
            raise result["error"]
        return result["value"]

    def run_coroutine(self, coroutine: Any, timeout: float = DEFAULT_TIMEOUT) -> Any:
        """Run a coroutine on the daemon's loop (e.g. a scheduled job body) and wait for it."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def _main(self) -> None:
        async def run() -> None:
            self._loop = asyncio.get_running_loop()
            self.daemon = Daemon(self.config, redactor=self.redactor, clock=self._clock, handle_signals=False)
            task = asyncio.create_task(self.daemon.run())
            started = asyncio.create_task(self.daemon.started.wait())
            await asyncio.wait([task, started], return_when=asyncio.FIRST_COMPLETED)
            self._started.set()
            try:
                self.exit_code = await task
            finally:
                started.cancel()

        try:
            asyncio.run(run())
        except BaseException as error:
            self.error = error
        finally:
            self._started.set()


@contextmanager
def running_daemon(config: Config, clock: Clock | None = None) -> Iterator[DaemonThread]:
    """Start the daemon in a thread for the ``with`` block; stop it afterwards."""
    runner = DaemonThread(config, clock).start()
    try:
        yield runner
    finally:
        runner.stop()


class DaemonProcess:
    """``python -m uploader_daemon run`` as a real process, its stdout in a file."""

    def __init__(self, config_path: Path, log_path: Path, env: Mapping[str, str] | None = None) -> None:
        self.config_path = config_path
        self.log_path = log_path
        environment = {**os.environ, **(env or {})}
        environment.pop("NOTIFY_SOCKET", None)
        self._log_file = log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uploader_daemon", "run", "--config", str(config_path)],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=environment,
        )

    @property
    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_for_log(self, text: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        wait_until(lambda: text in self.output or self.process.poll() is not None, timeout, f"log {text!r}")
        if text not in self.output:
            raise AssertionError(
                f"the daemon exited ({self.process.returncode}) before logging {text!r}:\n{self.output}"
            )

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(DEFAULT_TIMEOUT)

    def wait(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        code = self.process.wait(timeout)
        self._log_file.close()
        return code

    def close(self) -> None:
        if self.process.poll() is None:
            self.kill()
        self._log_file.close()


class SyncJournal:
    """The SQLite journal, driven synchronously in the words of its first interface.

    Unit tests written before claims existed keep their scripts: each old method is one
    call of the claim-based interface (a claim held by :data:`OWNER`).
    """

    def __init__(self, journal: SqliteJournal) -> None:
        self._journal = journal
        self.backend = journal
        self._db = journal._db
        self._loop = asyncio.new_event_loop()

    @classmethod
    def open(cls, path: Path) -> SyncJournal:
        return cls(SqliteJournal.open(path))

    def _run(self, coroutine: Any) -> Any:
        return self._loop.run_until_complete(coroutine)

    def _claim(self, record_id: int) -> Claim:
        return Claim(self.get(record_id), OWNER, 0)

    def close(self) -> None:
        self._run(self._journal.close())
        self._loop.close()

    def admit(self, target: str, path: str, size: int, mtime_ns: int, now: float) -> FileRecord | None:
        result: FileRecord | None = self._run(
            self._journal.admit(target, path, FileIdentity(size, mtime_ns), now)
        )
        return result

    def was_settled(self, target: str, path: str, size: int, mtime_ns: int) -> bool:
        result: bool = self._run(self._journal.is_settled(target, path, FileIdentity(size, mtime_ns)))
        return result

    def recover_interrupted(self, now: float) -> int:
        result: int = self._run(self._journal.release_claims(OWNER, now))
        return result

    def unfinished(self, target: str) -> list[FileRecord]:
        result: list[FileRecord] = self._run(self._journal.unfinished(target))
        return result

    def get(self, record_id: int) -> FileRecord:
        result: FileRecord = self._run(self._journal.get(record_id))
        return result

    def step_started(self, record_id: int, step: int, plan: str, now: float) -> None:
        self._run(self._journal.step_started(self._claim(record_id), step, plan, now))

    def step_finished(self, record_id: int, step: int, outputs: dict[str, Any], now: float) -> None:
        self._run(self._journal.step_finished(self._claim(record_id), step, outputs, now))

    def resume_at(self, record_id: int, step: int, outputs: dict[str, Any], now: float) -> None:
        self._run(self._journal.resume_at(self._claim(record_id), step, outputs, now))

    def retry_later(self, record_id: int, error: str, status: int | None, now: float) -> int:
        record = self._run(
            self._journal.release(
                self._claim(record_id), now, failed_attempt=True, error=error, status=status
            )
        )
        return int(record.attempts)

    def requeue(self, record_id: int, now: float, error: str | None = None) -> None:
        self._run(self._journal.release(self._claim(record_id), now, error=error))

    def interrupted(self, record_id: int, now: float) -> None:
        self._run(self._journal.release(self._claim(record_id), now))

    def delivered(self, record_id: int, now: float) -> None:
        self._run(self._journal.delivered(self._claim(record_id), now))

    def done(self, record_id: int, destination: str | None, now: float) -> None:
        disposition = Disposition.KEPT if destination is None else Disposition.ARCHIVED
        self._run(self._journal.finish(self._claim(record_id), disposition, destination, now))

    def failed(
        self, record_id: int, error: str, status: int | None, destination: str | None, now: float
    ) -> None:
        disposition = Disposition.LEFT_IN_PLACE if destination is None else Disposition.PARKED
        self._run(self._journal.fail(self._claim(record_id), error, status, disposition, destination, now))

    def gone(self, record_id: int, now: float) -> None:
        self._run(self._journal.forget(self._claim(record_id), now))

    def counts(self, target: str) -> TargetCounts:
        result: TargetCounts = self._run(self._journal.counts(target))
        return result

    def prune(self, older_than: float) -> int:
        result: int = self._run(self._journal.prune(older_than))
        return result


def run_cli(
    *arguments: str, env: Mapping[str, str] | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run `python -m uploader_daemon ARGUMENTS` as an admin would, and capture its output.

    The test's own config variable and systemd's notify socket are not passed on.
    """
    environment = {**os.environ}
    environment.pop("UPLOADER_DAEMON_CONFIG", None)
    environment.pop("NOTIFY_SOCKET", None)
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "uploader_daemon", *arguments],
        capture_output=True,
        text=True,
        env=environment,
        timeout=timeout,
        check=False,
    )


def log_events(output: str) -> list[dict[str, Any]]:
    """The JSON log lines of a daemon's output, parsed (other lines are skipped)."""
    events = []
    for line in output.splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events
