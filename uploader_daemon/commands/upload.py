"""``uploader-daemon upload``: deliver these files now, with a target's credential and steps.

The files stay where they are: nothing is archived, parked or deleted, and no sidecar is
written; the outcome is what the command prints and its exit code. The delivery is the
daemon's own machinery (:class:`~uploader_daemon.delivery.run.Delivery`, the steps,
:class:`~uploader_daemon.auth.wire.CredentialAuth`, the target's credential), run
against a private journal in memory: the daemon's journal and its state-directory
lock are never touched, so this works while the daemon runs. The token store is shared:
a token the daemon holds is used without a new login, and a login made here is saved
for the daemon (see :mod:`uploader_daemon.auth.store`). Results of a ``download`` step
land in its ``output_dir``, as they would for the daemon.

Each file gets up to ``attempts`` attempts: transient failures (no answer, 408, 429,
5xx) and a refused token wait the target's backoff (at most :data:`MAX_WAIT` seconds)
and go again; a permanent failure (another 4xx, a failure status) or a failed login
ends that file at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import stat
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx

from uploader_daemon.activity import ApiActivity
from uploader_daemon.auth import CredentialAuth, build_credential
from uploader_daemon.backoff import backoff_delay
from uploader_daemon.clock import Clock, SystemClock
from uploader_daemon.config.schema import Config, TargetSettings
from uploader_daemon.config.upload import ApiStep
from uploader_daemon.delivery.facts import file_facts
from uploader_daemon.delivery.run import Delivery, uses_sha256
from uploader_daemon.delivery.steps import StepContext
from uploader_daemon.errors import (
    AuthRejectedError,
    DeliveryError,
    LoginFailedError,
    TransientDeliveryError,
)
from uploader_daemon.http import build_client
from uploader_daemon.identity import FileIdentity
from uploader_daemon.journal import Claim, SqliteJournal
from uploader_daemon.redaction import Redactor
from uploader_daemon.state import StateDir
from uploader_daemon.urls import safe_url

OWNER = "upload-command"
DEFAULT_ATTEMPTS = 3
# An admin waits at the terminal: no backoff longer than this between two attempts.
MAX_WAIT = 30.0

# Which file the request being sent belongs to (each file is delivered in a task of its own).
_CURRENT_FILE: contextvars.ContextVar[int] = contextvars.ContextVar("uploader_upload_file")


class Reporter(Protocol):
    """Where the progress of each file goes (a progress bar, or plain lines)."""

    def started(self, index: int, path: Path, size: int) -> None: ...

    def request(self, index: int, method: str, url: str) -> None: ...

    def sent(self, index: int, sent: int) -> None:
        """``sent`` bytes of the current body that carries the file have gone out."""

    def retrying(self, index: int, attempt: int, delay: float, error: str) -> None: ...

    def finished(self, index: int, error: str | None, seconds: float) -> None:
        """Delivered (``error`` is ``None``) or given up on."""


@dataclass(frozen=True)
class Outcome:
    path: Path
    error: str | None  # None: delivered
    seconds: float


def check_files(paths: Sequence[Path]) -> list[str]:
    """A sentence for each path that cannot be uploaded (missing, not a file, unreadable)."""
    problems = []
    for path in paths:
        try:
            info = path.stat()
        except FileNotFoundError:
            problems.append(f"{path}: no such file")
            continue
        except OSError as error:
            problems.append(f"{path}: {error.strerror or error}")
            continue
        if not stat.S_ISREG(info.st_mode):
            problems.append(f"{path}: not a regular file")
        elif not os.access(path, os.R_OK):
            problems.append(f"{path}: not readable by this user")
    return problems


async def upload_files(
    config: Config,
    target: TargetSettings,
    paths: Sequence[Path],
    reporter: Reporter,
    *,
    redactor: Redactor,
    attempts: int = DEFAULT_ATTEMPTS,
    clock: Clock | None = None,
) -> list[Outcome]:
    """Deliver every file in ``paths`` to ``target``; returns how each one ended."""
    clock = clock or SystemClock()
    with _tokens_dir(config) as tokens_dir:
        client = build_client(target.api, target.concurrency)
        client.event_hooks = {"request": [_progress_hook(reporter)]}
        activity = ApiActivity(clock)
        credential = build_credential(
            target, client=client, clock=clock, activity=activity, tokens_dir=tokens_dir, redactor=redactor
        )
        credential.start()  # a token the daemon saved is used as it is
        journal = SqliteJournal.open(":memory:")
        delivery = Delivery(target.steps, journal, clock)
        sender = _Sender(
            target=target,
            journal=journal,
            delivery=delivery,
            client=client,
            auth=CredentialAuth(credential, target.api.origin, activity),
            login=credential.headers if _needs_login(target) else None,
            clock=clock,
            reporter=reporter,
            attempts=attempts,
        )
        slots = asyncio.Semaphore(target.concurrency)

        async def one(index: int, path: Path) -> Outcome:
            async with slots:
                _CURRENT_FILE.set(index)
                return await sender.send(index, path)

        try:
            return list(await asyncio.gather(*(one(index, path) for index, path in enumerate(paths))))
        finally:
            await client.aclose()
            await journal.close()


class _Sender:
    """Delivers one file at a time through the target's steps (several run at once)."""

    def __init__(
        self,
        *,
        target: TargetSettings,
        journal: SqliteJournal,
        delivery: Delivery,
        client: httpx.AsyncClient,
        auth: httpx.Auth,
        login: Callable[[], Awaitable[object]] | None,
        clock: Clock,
        reporter: Reporter,
        attempts: int,
    ) -> None:
        self._target = target
        self._journal = journal
        self._delivery = delivery
        self._client = client
        self._auth = auth
        self._login = login
        self._clock = clock
        self._reporter = reporter
        self._attempts = attempts
        self._with_sha256 = uses_sha256(target.steps)

    async def send(self, index: int, path: Path) -> Outcome:
        started = self._clock.monotonic()
        try:
            descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as error:
            self._reporter.started(index, path, 0)
            return self._finish(index, path, f"cannot open it: {error.strerror or error}", started)
        try:
            info = os.fstat(descriptor)
            self._reporter.started(index, path, info.st_size)
            failure = await self._deliver(index, path, descriptor, FileIdentity.of(info))
        finally:
            os.close(descriptor)
        return self._finish(index, path, failure, started)

    def _finish(self, index: int, path: Path, error: str | None, started: float) -> Outcome:
        seconds = self._clock.monotonic() - started
        self._reporter.finished(index, error, seconds)
        return Outcome(path, error, seconds)

    async def _deliver(self, index: int, path: Path, descriptor: int, identity: FileIdentity) -> str | None:
        """Run the steps, retrying what may be retried; returns why it failed, or ``None``."""
        now = self._clock.now()
        # The absolute path is the journal's key: two files of the same name stay apart.
        record = await self._journal.admit(self._target.name, str(path), identity, now)
        assert record is not None, "a fresh in-memory journal knows no file"
        facts = await file_facts(
            path, path.name, descriptor=descriptor, size=identity.size, with_sha256=self._with_sha256
        )
        values = {"file": facts.template_values(), "target": {"name": self._target.name}}

        def context(outputs: dict[str, object]) -> StepContext:
            return StepContext(
                client=self._client,
                base_url=self._target.api.base_url,
                auth=self._auth,
                file=facts,
                values={**values, **outputs},
            )

        attempt = 0
        while True:
            attempt += 1
            claim = await self._journal.claim(record.id, OWNER, self._clock.now())
            assert claim is not None
            try:
                if self._login is not None:
                    await self._login()
                await self._delivery.run(claim, context)
            except LoginFailedError as error:
                return f"login failed: {error}"
            except DeliveryError as error:
                retryable = isinstance(error, TransientDeliveryError | AuthRejectedError)
                if not retryable or attempt >= self._attempts:
                    return _reason(error)
                await self._wait_before_retry(index, claim, error, attempt)
                continue
            return None

    async def _wait_before_retry(self, index: int, claim: Claim, error: DeliveryError, attempt: int) -> None:
        retry = self._target.retry
        retry_after = error.retry_after if isinstance(error, TransientDeliveryError) else None
        delay = min(
            MAX_WAIT, backoff_delay(attempt, retry.backoff, retry.max_backoff, retry_after=retry_after)
        )
        # Released with its checkpoint, so the next attempt resumes where that is safe.
        await self._journal.release(
            claim, self._clock.now(), failed_attempt=True, error=error.message, status=error.status
        )
        self._reporter.retrying(index, attempt, delay, _reason(error))
        await asyncio.sleep(delay)


def _needs_login(target: TargetSettings) -> bool:
    return any(isinstance(step, ApiStep) and step.credential for step in target.steps)


def _reason(error: DeliveryError) -> str:
    line = " ".join(error.message.split())
    return f"{error.status}: {line}" if error.status is not None else line


@contextlib.contextmanager
def _tokens_dir(config: Config) -> Iterator[Path]:
    """The daemon's token store, or a private one when the daemon never ran here."""
    tokens_dir = StateDir(config.state_dir).tokens_dir
    if tokens_dir.is_dir():
        yield tokens_dir
        return
    # Creating state_dir here could leave it owned by whoever ran this (root, say).
    with tempfile.TemporaryDirectory(prefix="uploader-daemon-tokens-") as private:
        yield Path(private)


def _progress_hook(reporter: Reporter) -> Callable[[httpx.Request], Awaitable[None]]:
    """An httpx request hook: names each request, and counts the bytes of file bodies."""

    async def hook(request: httpx.Request) -> None:
        index = _CURRENT_FILE.get(None)
        if index is None:
            return
        reporter.request(index, request.method, safe_url(str(request.url)))
        if request.headers.get("Content-Type", "").startswith("multipart/form-data"):
            # Only multipart bodies carry the file; the others are a few bytes of JSON.
            request.stream = _CountingStream(request.stream, lambda sent: reporter.sent(index, sent))

    return hook


class _CountingStream(httpx.AsyncByteStream):
    """A request body that reports how much of it has been handed to the connection."""

    def __init__(self, inner: httpx.SyncByteStream | httpx.AsyncByteStream, report: Callable[[int], None]):
        self._inner = inner
        self._report = report

    async def __aiter__(self) -> AsyncIterator[bytes]:
        sent = 0
        self._report(0)
        assert isinstance(self._inner, httpx.AsyncByteStream)
        async for chunk in self._inner:
            sent += len(chunk)
            self._report(sent)
            yield chunk

    async def aclose(self) -> None:
        if isinstance(self._inner, httpx.AsyncByteStream):
            await self._inner.aclose()
