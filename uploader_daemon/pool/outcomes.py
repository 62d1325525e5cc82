"""What becomes of a file once an attempt at it is over.

- Delivered: the ``after_upload`` action (archive: moved, name kept, never overwriting;
  delete; keep), then the journal says ``done``.
- Failed: a transient failure is retried with exponential backoff and jitter
  (``Retry-After`` is a floor) until ``retry.attempts``; a permanent one, or the last
  attempt, is given up on: the file moves to ``failed_dir`` with ``<name>.error.json``
  beside it (status, step, body excerpt, attempts, time; redacted), and the journal says
  ``failed``. A 401 is logged at error level; its token was already discarded.

Before anything is moved, the path is checked against the version that was delivered
(its identity: inode, size, mtime): a file replaced or rewritten in the meantime is a new
file to deliver and is left where it is. A move is a hard link on the event loop
(microseconds); a copy to another filesystem runs in a thread.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import functools
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uploader_daemon.backoff import backoff_delay
from uploader_daemon.clock import Clock, iso_utc
from uploader_daemon.config.schema import TargetSettings
from uploader_daemon.errors import (
    AuthRejectedError,
    DeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from uploader_daemon.file_moves import CopyNeededError, FileChangedError, SidecarError, archive, fail
from uploader_daemon.identity import FileIdentity
from uploader_daemon.journal import Claim, Disposition, Journal, LeaseLostError
from uploader_daemon.logs import get_logger
from uploader_daemon.monitor import QUIET, TargetEvents
from uploader_daemon.redaction import Redactor

log = get_logger(__name__)

_PERMISSION_ERRORS = (errno.EACCES, errno.EPERM, errno.EROFS)


class Verdict(enum.Enum):
    """What the worker pool does next with the file."""

    SETTLED = "settled"  # filed away, deleted, kept, or given up: nothing more to do
    REPLACED = "replaced"  # the path now holds another version: watch it settle and deliver it
    RETRY_FILING = "retry_filing"  # the after_upload action failed; the delivery itself stands
    RETRY = "retry"  # the delivery failed and is tried again after ``delay``


@dataclass(frozen=True)
class Next:
    verdict: Verdict
    delay: float = 0.0


class Presence(enum.Enum):
    """Is the version that was delivered (or given up on) still at its path?"""

    SAME = "same"
    VANISHED = "vanished"
    REPLACED = "replaced"


class Outcomes:
    """Files a target's delivered files away, retries failures, parks what cannot go."""

    def __init__(
        self,
        target: TargetSettings,
        journal: Journal,
        clock: Clock,
        redactor: Redactor,
        events: TargetEvents = QUIET,
    ) -> None:
        self._target = target
        self._events = events
        self._journal = journal
        self._clock = clock
        # Reports quote server answers, which may echo a token they were sent.
        self._redactor = redactor
        self._log = log.bind(target=target.name)

    # --- delivered -------------------------------------------------------------------

    async def file_away(
        self, claim: Claim, seconds: float | None = None, sent: FileIdentity | None = None
    ) -> Verdict:
        """Apply ``after_upload`` to a delivered file; it is never sent again either way.

        ``sent`` is the version that went out (known while the process that sent it runs;
        after a restart the journal's identity of the row stands in for it).
        """
        record = claim.record
        action = self._target.after_upload
        path = self._target.folder / record.path
        delivered = sent or record.identity
        presence = _presence(path, delivered)
        disposition = Disposition.KEPT
        destination: str | None = None
        if action.action != "keep":
            self._still_held(claim)
        try:
            if presence is Presence.VANISHED and (
                archived := _archived_earlier(action.archive_dir, record.path, delivered)
            ):
                # Moved by an earlier try whose journal write failed: it is archived, not lost.
                disposition, destination = Disposition.ARCHIVED, str(archived)
            elif presence is Presence.VANISHED:
                disposition = Disposition.VANISHED
            elif presence is Presence.SAME and action.action == "archive":
                assert action.archive_dir is not None
                moved = await _move(archive, path, action.archive_dir, record.path, expect=delivered)
                disposition, destination = Disposition.ARCHIVED, str(moved)
            elif presence is Presence.SAME and action.action == "delete":
                path.unlink()
                disposition = Disposition.DELETED
        except FileChangedError:
            presence = Presence.REPLACED
        except FileNotFoundError:
            disposition = Disposition.VANISHED
        except OSError as error:
            self._log.error(
                "after_upload_failed",
                file=record.path,
                action=action.action,
                error=f"{error.strerror or error}",
                hint=self._folder_hint(error, action.archive_dir)
                + "; the file was delivered and will not be sent again",
            )
            return Verdict.RETRY_FILING
        self._events.file_delivered(record.path, record.size, seconds)
        if presence is Presence.REPLACED:
            await self._journal.finish(claim, Disposition.REPLACED, None, self._clock.now())
            self._log.info(
                "file_replaced_after_delivery",
                file=record.path,
                action="the new version at that path will be delivered too",
            )
            return Verdict.REPLACED
        await self._journal.finish(claim, disposition, destination, self._clock.now())
        self._log.info(
            "file_delivered",
            file=record.path,
            size=record.size,
            after_upload=action.action,
            destination=destination or (disposition if disposition is not Disposition.KEPT else None),
            seconds=round(seconds, 3) if seconds is not None else None,
        )
        if action.action != "keep" and os.path.lexists(path):
            return Verdict.REPLACED  # a new version arrived while the old one was moved
        return Verdict.SETTLED

    async def changed_during_upload(self, claim: Claim) -> None:
        """Delivered, but written to meanwhile: this version is done, the new one goes too."""
        await self._journal.finish(claim, Disposition.CHANGED, None, self._clock.now())
        self._events.file_delivered(claim.record.path, claim.record.size, None)
        self._log.warning(
            "file_changed_during_upload",
            file=claim.record.path,
            action="it was written to while being sent; the new version will be sent too",
        )

    # --- failed ----------------------------------------------------------------------

    async def failed(self, claim: Claim, error: DeliveryError, sent: FileIdentity | None) -> Next:
        """Count the failed attempt; retry after a backoff, or give up on the file."""
        record = claim.record
        attempt = record.attempts + 1
        retry = self._target.retry
        if isinstance(error, PermanentDeliveryError) or attempt >= retry.attempts:
            return Next(await self.give_up(claim, error, attempt, sent))
        if isinstance(error, AuthRejectedError):
            self._log.error(
                "upload_unauthorized",
                file=record.path,
                status=401,
                step=error.step,
                attempt=attempt,
                action="token discarded; retrying after a fresh login",
            )
        message = self._redactor.scrub(error.message)
        retry_after = error.retry_after if isinstance(error, TransientDeliveryError) else None
        delay = backoff_delay(attempt, retry.backoff, retry.max_backoff, retry_after=retry_after)
        now = self._clock.now()
        await self._journal.release(
            claim, now, failed_attempt=True, error=message, status=error.status, not_before=now + delay
        )
        if not isinstance(error, AuthRejectedError):
            self._log.warning(
                "delivery_failed",
                file=record.path,
                step=error.step,
                status=error.status,
                error=message,
                attempt=attempt,
                attempts_left=retry.attempts - attempt,
                retry_in=round(delay, 1),
            )
        return Next(Verdict.RETRY, delay)

    async def give_up(
        self, claim: Claim, error: DeliveryError, attempts: int, sent: FileIdentity | None = None
    ) -> Verdict:
        """Move the file to ``failed_dir`` with the reason beside it; the journal says ``failed``."""
        record = claim.record
        now = self._clock.now()
        message = self._redactor.scrub(error.message)
        path = self._target.folder / record.path
        version = sent or record.identity
        presence = _presence(path, version)
        disposition = Disposition.VANISHED if presence is Presence.VANISHED else Disposition.REPLACED
        destination: str | None = None
        if presence is Presence.SAME:
            self._still_held(claim)
            disposition, destination = await self._park(claim, error, attempts, message, now, version)
        await self._journal.fail(
            claim, message, error.status, disposition, destination, now, attempts=attempts
        )
        failure = {
            "file": record.path,
            "step": error.step,
            "status": error.status,
            "error": message,
            "attempts": attempts,
            "destination": destination or disposition,
        }
        if disposition is Disposition.REPLACED:
            self._log.warning(
                "file_failed", **failure, action="the path now holds a newer version, which will be delivered"
            )
            return Verdict.REPLACED
        self._log.error("file_failed", **failure)
        if disposition in (Disposition.PARKED, Disposition.LEFT_IN_PLACE):
            self._events.file_parked(record.path, destination, _reason(error.status, message))
        return Verdict.SETTLED

    async def _park(
        self,
        claim: Claim,
        error: DeliveryError,
        attempts: int,
        message: str,
        now: float,
        version: FileIdentity,
    ) -> tuple[Disposition, str | None]:
        """Move the file and its sidecar into failed_dir; says where it went, if anywhere."""
        record = claim.record
        report: dict[str, Any] = {
            "target": self._target.name,
            "file": record.path,
            "failed_at": iso_utc(now),
            "attempts": attempts,
            "step": error.step,
            "status": error.status,
            "error": message,
            "body_excerpt": error.body_excerpt,
            "details": getattr(error, "details", None),
        }
        report = dict(self._redactor(None, "sidecar", report))
        path = self._target.folder / record.path
        try:
            moved = await _move(fail, path, self._target.failed_dir, record.path, report, expect=version)
        except FileChangedError:
            return Disposition.REPLACED, None
        except SidecarError as sidecar_error:
            self._log.error(
                "failed_sidecar_unwritten",
                file=record.path,
                destination=str(sidecar_error.destination),
                error=sidecar_error.strerror,
                hint="the file is in failed_dir without its .error.json; this log line has the reason",
            )
            return Disposition.PARKED, str(sidecar_error.destination)
        except FileNotFoundError:
            return Disposition.VANISHED, None
        except OSError as move_error:
            self._log.error(
                "failed_dir_unusable",
                file=record.path,
                error=f"{move_error.strerror or move_error}",
                hint=self._folder_hint(move_error, self._target.failed_dir)
                + "; the file stays in the drop folder and is retried only if it changes",
            )
            return Disposition.LEFT_IN_PLACE, None
        return Disposition.PARKED, str(moved)

    # --- gone ------------------------------------------------------------------------

    async def forget(self, claim: Claim, event: str, reason: str) -> None:
        """The file cannot be delivered from where it was (removed, a symlink now, ...)."""
        await self._journal.forget(claim, self._clock.now())
        if await self._journal.delivered_before(claim.record):
            # Found by a scan just before it was filed away (here or by another daemon).
            self._log.debug("file_admitted_after_delivery", file=claim.record.path)
            return
        self._log.warning(event, file=claim.record.path, reason=reason)

    def _still_held(self, claim: Claim) -> None:
        """Before a file is moved or deleted: a claim another daemon may have taken stops here."""
        if not self._journal.holds(claim):
            raise LeaseLostError(
                f"the lease on {claim.record.path} is about to run out or was lost; the file is not moved"
            )

    def _folder_hint(self, error: OSError, other: Path | None) -> str:
        folders = f"{self._target.folder}" + (f" and {other}" if other else "")
        if error.errno in _PERMISSION_ERRORS:
            return (
                f"give the daemon's user write access to {folders} (no sticky bit on the drop "
                "folder) and list them in the unit's ReadWritePaths="
            )
        return f"check {folders}"


def _reason(status: int | None, message: str) -> str:
    """One line for an alert: the status (when there was one) and the cause."""
    line = " ".join(message.split())
    return f"{status}: {line}" if status is not None else line


async def _move(mover: Callable[..., Path], *arguments: Any, **options: Any) -> Path:
    """Run ``archive``/``fail`` with a hard link on the loop; a copy goes to a thread."""
    try:
        return mover(*arguments, allow_copy=False, **options)
    except CopyNeededError:
        return await asyncio.to_thread(functools.partial(mover, *arguments, **options))


def _archived_earlier(archive_dir: Path | None, relative_path: str, version: FileIdentity) -> Path | None:
    """Where this very version already lies in the archive under its own name, if it does."""
    if archive_dir is None:
        return None
    candidate = archive_dir / relative_path
    return candidate if _presence(candidate, version) is Presence.SAME else None


def _presence(path: Path, version: FileIdentity) -> Presence:
    """Is ``version`` still at ``path``?"""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return Presence.VANISHED
    if not stat.S_ISREG(info.st_mode):
        return Presence.REPLACED
    return Presence.SAME if FileIdentity.of(info).same_version(version) else Presence.REPLACED
