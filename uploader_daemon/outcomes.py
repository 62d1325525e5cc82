"""What becomes of a file once its delivery is over.

- Delivered: the ``after_upload`` action (archive: moved, name kept, never overwriting;
  delete; keep), then the journal says ``done``.
- Given up: moved to ``failed_dir`` with ``<name>.error.json`` beside it (status, step,
  body excerpt, attempts, time; redacted), then the journal says ``failed``.

Before anything is moved, the path is checked against what was delivered (size and
mtime): a file replaced or rewritten in the meantime is a new file to deliver and is
left where it is. A move is a hard link on the event loop (microseconds); a copy to
another filesystem runs in a thread.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import functools
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from uploader_daemon.clock import Clock, iso_utc
from uploader_daemon.config.schema import TargetSettings
from uploader_daemon.errors import DeliveryError
from uploader_daemon.file_moves import (
    CopyNeededError,
    FileChangedError,
    Identity,
    SidecarError,
    archive,
    fail,
    identity,
)
from uploader_daemon.journal import FileRecord, Journal
from uploader_daemon.logs import get_logger
from uploader_daemon.redaction import Redactor

log = get_logger(__name__)

_PERMISSION_ERRORS = (errno.EACCES, errno.EPERM, errno.EROFS)


class Verdict(enum.Enum):
    """What the worker pool does next with the record."""

    SETTLED = "settled"  # filed away, deleted, kept, or given up: nothing more to do
    REPLACED = "replaced"  # the path now holds another version: deliver that one
    RETRY = "retry"  # the after_upload action failed; the delivery itself stands


class Outcomes:
    """Files a target's delivered files away, and parks the ones that cannot be delivered."""

    def __init__(self, target: TargetSettings, journal: Journal, clock: Clock, redactor: Redactor) -> None:
        self._target = target
        self._journal = journal
        self._clock = clock
        # Reports quote server answers, which may echo a token they were sent.
        self._redactor = redactor
        self._log = log.bind(target=target.name)

    async def file_away(
        self, record: FileRecord, duration: float | None = None, sent: Identity | None = None
    ) -> Verdict:
        """Apply ``after_upload`` to a delivered file; it is never sent again either way.

        ``sent`` identifies the version that was delivered (known while the process that
        sent it runs; after a restart, size and mtime from the journal must do).
        """
        action = self._target.after_upload
        path = self._target.folder / record.path
        state = _compare(path, record, sent)
        destination: str | None = "vanished" if state == "vanished" else None
        try:
            if state == "same" and action.action == "archive":
                assert action.archive_dir is not None
                destination = str(await _move(archive, path, action.archive_dir, record.path, expect=sent))
            elif state == "same" and action.action == "delete":
                path.unlink()
                destination = "deleted"
        except FileChangedError:
            state = "replaced"
        except FileNotFoundError:
            destination = "vanished"
        except OSError as error:
            self._log.error(
                "after_upload_failed",
                file=record.path,
                action=action.action,
                error=f"{error.strerror or error}",
                hint=self._folder_hint(error, action.archive_dir)
                + "; the file was delivered and will not be sent again",
            )
            return Verdict.RETRY
        if state == "replaced":
            self._journal.done(record.id, "replaced", self._clock.now())
            self._log.info(
                "file_replaced_after_delivery",
                file=record.path,
                action="the new version at that path will be delivered too",
            )
            return Verdict.REPLACED
        self._journal.done(record.id, destination, self._clock.now())
        self._log.info(
            "file_delivered",
            file=record.path,
            size=record.size,
            after_upload=action.action,
            destination=destination,
            seconds=round(duration, 3) if duration is not None else None,
        )
        if action.action != "keep" and os.path.lexists(path):
            return Verdict.REPLACED  # a new version arrived while the old one was moved
        return Verdict.SETTLED

    async def give_up(
        self, record: FileRecord, error: DeliveryError, attempts: int, sent: Identity | None = None
    ) -> Verdict:
        """Move the file to ``failed_dir`` with the reason beside it; the journal says ``failed``."""
        now = self._clock.now()
        message = self._redactor.scrub(error.message)
        path = self._target.folder / record.path
        state = _compare(path, record, sent)
        destination: str | None = state  # "replaced" or "vanished" unless the move below decides
        if state == "same":
            destination = await self._park(record, error, attempts, message, now, sent)
            if destination == "replaced":
                state = "replaced"
        self._journal.failed(record.id, message, error.status, destination, now)
        failure = {
            "file": record.path,
            "step": error.step,
            "status": error.status,
            "error": message,
            "attempts": attempts,
            "destination": destination,
        }
        if state == "replaced":
            self._log.warning(
                "file_failed", **failure, action="the path now holds a newer version, which will be delivered"
            )
            return Verdict.REPLACED
        self._log.error("file_failed", **failure)
        return Verdict.SETTLED

    async def _park(
        self,
        record: FileRecord,
        error: DeliveryError,
        attempts: int,
        message: str,
        now: float,
        sent: Identity | None,
    ) -> str | None:
        """Move the file and its sidecar into failed_dir; ``None`` if it had to stay."""
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
            return str(await _move(fail, path, self._target.failed_dir, record.path, report, expect=sent))
        except FileChangedError:
            return "replaced"
        except SidecarError as sidecar_error:
            self._log.error(
                "failed_sidecar_unwritten",
                file=record.path,
                destination=str(sidecar_error.destination),
                error=sidecar_error.strerror,
                hint="the file is in failed_dir without its .error.json; this log line has the reason",
            )
            return str(sidecar_error.destination)
        except FileNotFoundError:
            return "vanished"
        except OSError as move_error:
            self._log.error(
                "failed_dir_unusable",
                file=record.path,
                error=f"{move_error.strerror or move_error}",
                hint=self._folder_hint(move_error, self._target.failed_dir)
                + "; the file stays in the drop folder and is retried only if it changes",
            )
            return None

    def _folder_hint(self, error: OSError, other: Path | None) -> str:
        folders = f"{self._target.folder}" + (f" and {other}" if other else "")
        if error.errno in _PERMISSION_ERRORS:
            return (
                f"give the daemon's user write access to {folders} (no sticky bit on the drop "
                "folder) and list them in the unit's ReadWritePaths="
            )
        return f"check {folders}"


async def _move(mover: Callable[..., Path], *arguments: Any, **options: Any) -> Path:
    """Run ``archive``/``fail`` with a hard link on the loop; a copy goes to a thread."""
    try:
        return mover(*arguments, allow_copy=False, **options)
    except CopyNeededError:
        return await asyncio.to_thread(functools.partial(mover, *arguments, **options))


def _compare(path: Path, record: FileRecord, sent: Identity | None) -> str:
    """ "same", "vanished" or "replaced": is the delivered version still at ``path``?"""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return "vanished"
    if not stat.S_ISREG(info.st_mode):
        return "replaced"
    if sent is not None:
        return "same" if identity(info) == sent else "replaced"
    return "same" if (info.st_size, info.st_mtime_ns) == (record.size, record.mtime_ns) else "replaced"
