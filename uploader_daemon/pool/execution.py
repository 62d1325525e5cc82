"""Executing one delivery: open the claimed file, run its steps, say how it ended.

The file is opened once, without following symlinks, and checked against the version
that was found ready; every step reads through that descriptor, so what was checked is
what is sent. Nothing here decides what happens next: the result goes to the worker pool,
which files it (:mod:`uploader_daemon.pool.outcomes`) and reschedules.
"""

from __future__ import annotations

import enum
import errno
import os
import stat
from dataclasses import dataclass

import httpx

from uploader_daemon.auth.base import Credential
from uploader_daemon.clock import Clock
from uploader_daemon.config.schema import TargetSettings
from uploader_daemon.config.upload import ApiStep
from uploader_daemon.delivery.facts import file_facts
from uploader_daemon.delivery.run import Delivery, uses_sha256
from uploader_daemon.delivery.steps import StepContext
from uploader_daemon.drop_folder import DropFolder
from uploader_daemon.errors import DeliveryError, LoginFailedError
from uploader_daemon.identity import FileIdentity
from uploader_daemon.journal import Claim
from uploader_daemon.logs import get_logger
from uploader_daemon.monitor import QUIET, TargetEvents

log = get_logger(__name__)


class Ending(enum.Enum):
    """How one attempt at a file ended."""

    DELIVERED = "delivered"  # every step succeeded; the journal says delivered
    CHANGED_DURING = "changed_during"  # delivered, but written to while it was sent
    FAILED = "failed"  # a step failed (``error`` says how)
    WAITING_FOR_LOGIN = "waiting_for_login"  # no credential; nothing was sent
    CHANGED_BEFORE = "changed_before"  # another version since it was found ready: settle again
    UNREADABLE = "unreadable"  # the daemon's user cannot read it
    VANISHED = "vanished"  # removed from the drop folder before delivery
    SYMLINK = "symlink"  # it, or a folder on its way, became a symlink
    NOT_REGULAR = "not_regular"  # no longer a regular file


@dataclass(frozen=True)
class Attempt:
    """The result of one attempt; ``sent`` is the version that went out (when one did)."""

    ending: Ending
    error: DeliveryError | LoginFailedError | None = None
    sent: FileIdentity | None = None
    seconds: float | None = None
    started: float = 0.0  # monotonic


class Execution:
    """Runs one claimed file's delivery for a target."""

    def __init__(
        self,
        *,
        target: TargetSettings,
        delivery: Delivery,
        folder: DropFolder,
        client: httpx.AsyncClient,
        auth: httpx.Auth,
        credential: Credential,
        clock: Clock,
        events: TargetEvents = QUIET,
    ) -> None:
        self._target = target
        self._events = events
        self._delivery = delivery
        self._folder = folder
        self._client = client
        self._auth = auth
        self._credential = credential
        self._clock = clock
        self._needs_sha256 = uses_sha256(target.steps)
        self._needs_login = any(isinstance(step, ApiStep) and step.credential for step in target.steps)
        self._target_values = {"name": target.name}
        self._log = log.bind(target=target.name)

    async def run(self, claim: Claim) -> Attempt:
        """Attempt the delivery of the claimed file; never raises a delivery's own errors."""
        record = claim.record
        started = self._clock.monotonic()
        opened = self._open(record.path, record.identity)
        if isinstance(opened, Ending):
            return Attempt(opened, started=started)
        descriptor, sent = opened
        try:
            if self._needs_login:
                try:
                    await self._credential.headers()
                except LoginFailedError as error:
                    return Attempt(Ending.WAITING_FOR_LOGIN, error, started=started)
            return await self._deliver(claim, descriptor, sent, started)
        finally:
            os.close(descriptor)

    def _open(self, relative_path: str, expected: FileIdentity) -> tuple[int, FileIdentity] | Ending:
        """The open descriptor and the version in it, or why the file cannot be delivered."""
        try:
            descriptor = self._folder.open(relative_path)
        except FileNotFoundError:
            return Ending.VANISHED
        except PermissionError:
            return Ending.UNREADABLE
        except OSError as error:
            if error.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            return Ending.SYMLINK
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            os.close(descriptor)
            return Ending.NOT_REGULAR
        opened = FileIdentity.of(info)
        if not opened.same_version(expected):
            os.close(descriptor)
            return Ending.CHANGED_BEFORE
        return descriptor, opened

    async def _deliver(self, claim: Claim, descriptor: int, sent: FileIdentity, started: float) -> Attempt:
        record = claim.record
        facts = await file_facts(
            self._target.folder / record.path,
            record.path,
            descriptor=descriptor,
            size=sent.size,
            with_sha256=self._needs_sha256,
        )
        file_values = facts.template_values()

        def context(outputs: dict[str, object]) -> StepContext:
            return StepContext(
                client=self._client,
                base_url=self._target.api.base_url,
                auth=self._auth,
                file=facts,
                values={"file": file_values, "target": self._target_values, **outputs},
                events=self._events,
            )

        self._log.debug("delivery_started", file=record.path, attempt=record.attempts + 1, size=facts.size)
        try:
            await self._delivery.run(claim, context)
        except (LoginFailedError, DeliveryError) as error:
            ending = Ending.WAITING_FOR_LOGIN if isinstance(error, LoginFailedError) else Ending.FAILED
            return Attempt(ending, error, sent, started=started)
        seconds = self._clock.monotonic() - started
        if not FileIdentity.of(os.fstat(descriptor)).same_version(sent):
            return Attempt(Ending.CHANGED_DURING, sent=sent, seconds=seconds, started=started)
        return Attempt(Ending.DELIVERED, sent=sent, seconds=seconds, started=started)
