"""Shared pieces of the worker-pool unit tests: a target, fakes of the real interfaces, waiting.

Everything here implements an interface of the package (``Credential``, ``Journal``,
``Resettle``) rather than pinning call sequences, so the tests survive refactors that
keep the behaviour.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.helpers import FakeClock, load, tls
from uploader_daemon.activity import ApiActivity
from uploader_daemon.auth.base import AuthHeaders, Credential
from uploader_daemon.auth.wire import CredentialAuth
from uploader_daemon.config.schema import TargetSettings
from uploader_daemon.delivery.run import Delivery
from uploader_daemon.drop_folder import DropFolder
from uploader_daemon.errors import LoginFailedError
from uploader_daemon.identity import FileIdentity
from uploader_daemon.journal import Claim, FileRecord, SqliteJournal
from uploader_daemon.pool.execution import Execution
from uploader_daemon.pool.gate import ApiGate
from uploader_daemon.pool.intake import Intake
from uploader_daemon.pool.outcomes import Outcomes
from uploader_daemon.pool.schedule import Schedule
from uploader_daemon.pool.workers import WorkerPool
from uploader_daemon.redaction import Redactor

API = "https://api.example.test"
UPLOAD_URL = f"{API}/api/envio"
TOKEN = "t0k3n-value"
OWNER = "this-node"
DEADLINE = 5.0

Logs = list[MutableMapping[str, Any]]  # what structlog.testing.capture_logs collects


def target_settings(
    tmp_path: Path,
    *,
    after_upload: str = "archive",
    attempts: int = 3,
    backoff: str = "20ms",
    max_backoff: str = "100ms",
    concurrency: int = 1,
    upload: str = "{type: multipart}",
    extra: str = "",
) -> TargetSettings:
    """One target on ``tmp_path/drop`` (created) delivering to :data:`API` with a multipart preset."""
    (tmp_path / "drop").mkdir(exist_ok=True)
    archive_dir = f", archive_dir: {tmp_path}/sent" if after_upload == "archive" else ""
    config = load(
        """
        state_dir: {tmp}/state
        targets:
          - name: docs
            folder: {tmp}/drop
            settle: 0s
            concurrency: {concurrency}
            retry: {{attempts: {attempts}, backoff: {backoff}, max_backoff: {max_backoff}}}
            after_upload: {{action: {after_upload}{archive_dir}}}
            failed_dir: {tmp}/failed
            api: {{base_url: "{api}"}}
            auth: {{type: headers, headers: {{Authorization: "Bearer {token}"}}}}
            upload: {upload}
            {extra}
        """,
        tmp=tmp_path,
        concurrency=concurrency,
        attempts=attempts,
        backoff=backoff,
        max_backoff=max_backoff,
        after_upload=after_upload,
        archive_dir=archive_dir,
        api=API,
        token=TOKEN,
        upload=upload,
        extra=extra,
    )
    return config.targets[0]


async def eventually(condition: Callable[[], object], timeout: float = DEADLINE, message: str = "") -> None:
    """Re-check ``condition`` on the loop until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message or condition}")
        await asyncio.sleep(0.005)


def drop(target: TargetSettings, name: str, content: bytes = b"a,b\n1,2\n") -> Path:
    """Write a file into the target's drop folder (sub-folders created)."""
    path = target.folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def identity_of(path: Path) -> FileIdentity:
    return FileIdentity.of(os.lstat(path))


async def admitted_claim(journal: SqliteJournal, target: TargetSettings, name: str, now: float) -> Claim:
    """Admit the file as it is on disk and claim it, as a worker would."""
    record = await journal.admit(target.name, name, identity_of(target.folder / name), now)
    assert record is not None
    claim = await journal.claim(record.id, OWNER, now)
    assert claim is not None
    return claim


def events_named(logs: Logs, name: str) -> Logs:
    return [entry for entry in logs if entry["event"] == name]


# --- credentials ---------------------------------------------------------------------


class RenewingCredential:
    """A credential whose refused token is replaced by a new one (the next generation)."""

    check_every = None
    expires_at = None

    def __init__(self) -> None:
        self.generation = 1
        self.rejections: list[int] = []

    def start(self) -> None:
        """Nothing is stored."""

    async def headers(self) -> AuthHeaders:
        return AuthHeaders({"Authorization": f"Bearer token-{self.generation}"}, self.generation)

    def rejected(self, used: AuthHeaders) -> None:
        self.rejections.append(used.generation)
        if used.generation == self.generation:
            self.generation += 1

    async def renew_if_due(self) -> None:
        """Renewal happens on rejection only."""


class LoginFailingCredential:
    """A credential whose login fails for the first ``failures`` requests, each with a backoff.

    ``retry_at`` is ``delay`` seconds after the clock's monotonic time at the failure.
    """

    check_every = None
    expires_at = None

    def __init__(self, clock: FakeClock, failures: int, delay: float = 0.0) -> None:
        self._clock = clock
        self.failures_left = failures
        self.delay = delay
        self.asked = 0
        self.failed_at: list[float] = []  # loop times of the failed logins

    def start(self) -> None:
        """Nothing is stored."""

    async def headers(self) -> AuthHeaders:
        self.asked += 1
        if self.failures_left > 0:
            self.failures_left -= 1
            self.failed_at.append(asyncio.get_running_loop().time())
            raise LoginFailedError(
                "login refused: 503 from the login endpoint",
                retry_at=self._clock.monotonic() + self.delay,
                status=503,
            )
        return AuthHeaders({"Authorization": f"Bearer {TOKEN}"}, 1)

    def rejected(self, used: AuthHeaders) -> None:
        """Nothing to discard."""

    async def renew_if_due(self) -> None:
        """Nothing to renew."""


class FailingAfterCredential(LoginFailingCredential):
    """Logs in for the first ``good`` requests, then fails (a login lost mid-delivery)."""

    def __init__(self, clock: FakeClock, good: int) -> None:
        super().__init__(clock, failures=0)
        self._good = good

    async def headers(self) -> AuthHeaders:
        if self._good == 0:
            self.failures_left = 1
        else:
            self._good -= 1
        return await super().headers()


class RefusingFolder(DropFolder):
    """A drop folder whose files cannot be opened while ``refusing`` (root ignores modes)."""

    def __init__(self, target: TargetSettings, error_number: int) -> None:
        super().__init__(target)
        self._errno = error_number
        self.refusing = True
        self.refusals = 0

    def open(self, relative_path: str) -> int:
        if not self.refusing:
            return super().open(relative_path)
        self.refusals += 1
        raise OSError(self._errno, os.strerror(self._errno), self.full(relative_path))


# --- a journal with a failing disk -----------------------------------------------------


class FlakyJournal:
    """The SQLite journal, except that chosen methods fail a few times (a full disk).

    ``failures[name]`` says how many more calls of ``name`` raise ``sqlite3.OperationalError``
    (set with :meth:`break_for`; ``fail`` is the journal's own method).
    """

    def __init__(self, journal: SqliteJournal) -> None:
        self._journal = journal
        self.failures: dict[str, int] = {}
        self.raised: list[str] = []

    def break_for(self, name: str, times: int = 1) -> None:
        """The next ``times`` calls of method ``name`` raise."""
        self.failures[name] = times

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._journal, name)
        if not inspect.iscoroutinefunction(method):
            return method  # properties and the sync questions (holds, lease_watch) never fail

        async def call(*arguments: Any, **options: Any) -> Any:
            if self.failures.get(name, 0) > 0:
                self.failures[name] -= 1
                self.raised.append(name)
                raise sqlite3.OperationalError("database or disk is full")
            return await method(*arguments, **options)

        return call


# --- the whole pool --------------------------------------------------------------------


@dataclass
class Resettles:
    """The watcher's side of "settle this file again": records the paths."""

    paths: list[str] = field(default_factory=list)

    def resettle(self, relative_path: str) -> None:
        self.paths.append(relative_path)


@dataclass
class Pool:
    """A target's real Schedule, Intake, Execution, Outcomes and WorkerPool, on one journal."""

    target: TargetSettings
    journal: Any  # SqliteJournal or FlakyJournal: both implement the Journal interface
    backend: SqliteJournal
    clock: FakeClock
    client: httpx.AsyncClient
    credential: Credential
    auth: CredentialAuth
    delivery: Delivery
    schedule: Schedule
    intake: Intake
    outcomes: Outcomes
    execution: Execution
    workers: WorkerPool
    resettles: Resettles

    async def record(self, name: str) -> FileRecord:
        """The newest journal row of ``name``."""
        rows = [row for row in await self.backend.records(self.target.name) if row.path == name]
        assert rows, f"no journal row for {name}"
        return rows[0]

    async def state_of(self, name: str) -> str | None:
        rows = [row for row in await self.backend.records(self.target.name) if row.path == name]
        return str(rows[0].state) if rows else None


@dataclass
class PoolOptions:
    credential: Credential | None = None
    flaky: bool = False  # a FlakyJournal in front of the SQLite one
    clock: FakeClock = field(default_factory=FakeClock)
    folder: Callable[[TargetSettings], DropFolder] = DropFolder
    redactor: Redactor = field(default_factory=lambda: Redactor([TOKEN]))


def build_pool(target: TargetSettings, client: httpx.AsyncClient, options: PoolOptions | None = None) -> Pool:
    """Wire a target as :class:`uploader_daemon.service.TargetService` does, minus the watcher."""
    options = options or PoolOptions()
    clock = options.clock
    backend = SqliteJournal.open(":memory:")
    journal: Any = FlakyJournal(backend) if options.flaky else backend
    schedule = Schedule()
    credential: Credential = options.credential or RenewingCredential()
    activity = ApiActivity(clock, schedule.files_waiting)
    auth = CredentialAuth(credential, target.api.origin, activity)
    delivery = Delivery(target.steps, journal, clock)
    execution = Execution(
        target=target,
        delivery=delivery,
        folder=options.folder(target),
        client=client,
        auth=auth,
        credential=credential,
        clock=clock,
    )
    outcomes = Outcomes(target, journal, clock, options.redactor)
    resettles = Resettles()
    gate = ApiGate(target.name, target.retry, schedule, clock)
    workers = WorkerPool(
        target=target,
        schedule=schedule,
        journal=journal,
        execution=execution,
        outcomes=outcomes,
        gate=gate,
        resettle=resettles,
        clock=clock,
        owner=OWNER,
    )
    return Pool(
        target=target,
        journal=journal,
        backend=backend,
        clock=clock,
        client=client,
        credential=credential,
        auth=auth,
        delivery=delivery,
        schedule=schedule,
        intake=Intake(target, journal, schedule, clock),
        outcomes=outcomes,
        execution=execution,
        workers=workers,
        resettles=resettles,
    )


def client() -> httpx.AsyncClient:
    """An async client as the target's (respx intercepts its transport)."""
    return httpx.AsyncClient(verify=tls(), timeout=httpx.Timeout(5.0))


def loop_time() -> float:
    return asyncio.get_running_loop().time()


def iter_requests(route: Any) -> Iterator[httpx.Request]:
    """The requests a respx route received, in order."""
    for call in route.calls:
        yield call.request
