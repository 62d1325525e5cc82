"""What the journal knows, and the interface every journal backend implements.

A file's life::

    pending ──> uploading ──> delivered ──> done        (its after_upload action applied)
       ^            │
       └────────────┤  release: a retry, a login or outage wait, a shutdown, a crash
                    └──> failed                         (given up on)
    pending ──> gone                                    (removed by someone else first)

A worker **claims** a row before it works on it (pending → uploading, or a delivered
row to file it away); every later write names the claim. A claim carries its owner (this
daemon's node name) and a fence number, so a backend shared by several daemons can
refuse the writes of a claim that was taken over (:class:`LeaseLostError`). Start-up
releases only the claims this daemon held.

Every method is a coroutine: a shared backend talks to a server, and the local one
commits writes made in the same loop tick together.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import asyncio

from uploader_daemon.errors import UploaderError
from uploader_daemon.identity import FileIdentity


class FileState(enum.StrEnum):
    """Where a file is in its life (the journal's ``state`` column)."""

    PENDING = "pending"  # waiting for a worker (first try, retry, after a restart)
    UPLOADING = "uploading"  # claimed by a worker; its step checkpoint says how far it got
    DELIVERED = "delivered"  # every step succeeded: never sent again; waiting to be filed away
    DONE = "done"  # filed away (see the disposition)
    FAILED = "failed"  # given up on (see the disposition)
    GONE = "gone"  # left the drop folder before it was delivered


ACTIVE_STATES = (FileState.PENDING, FileState.UPLOADING, FileState.DELIVERED)


class Disposition(enum.StrEnum):
    """What became of a finished file (the journal's ``disposition`` column)."""

    ARCHIVED = "archived"  # moved into archive_dir (``destination`` is where)
    DELETED = "deleted"  # after_upload: delete
    KEPT = "kept"  # after_upload: keep; this version is never sent again
    PARKED = "parked"  # moved into failed_dir with its .error.json (``destination``)
    LEFT_IN_PLACE = "left_in_place"  # failed but could not be moved; never sent again as it is
    VANISHED = "vanished"  # gone from the drop folder before it could be filed
    REPLACED = "replaced"  # the path holds another version now; that one is delivered too
    CHANGED = "changed"  # written to while it was sent; the new version is delivered too


# Finished versions that stay in the drop folder: sending them again would be wrong.
SETTLED_IN_PLACE = (Disposition.KEPT, Disposition.LEFT_IN_PLACE)


@dataclass(frozen=True)
class FileRecord:
    """One journal row: a version of a file and how far its delivery got."""

    id: int
    target: str
    path: str  # relative to the target's folder
    identity: FileIdentity
    state: FileState
    attempts: int
    next_step: int
    step_in_flight: int | None
    outputs: dict[str, Any]
    plan: str | None  # the step list the checkpoint belongs to
    last_error: str | None
    last_status: int | None
    disposition: Disposition | None
    destination: str | None  # where it was moved (archive or failed_dir), if it was
    idempotency_key: str
    owner: str | None  # the node holding the claim
    discovered_at: float
    updated_at: float

    @property
    def size(self) -> int:
        return self.identity.size

    @property
    def mtime_ns(self) -> int:
        return self.identity.mtime_ns


@dataclass(frozen=True)
class Claim:
    """A worker's hold on one row; every write of the delivery names it."""

    record: FileRecord
    owner: str
    fence: int

    @property
    def record_id(self) -> int:
        return self.record.id


@dataclass(frozen=True)
class TargetCounts:
    """What ``status`` shows for one target."""

    pending: int = 0
    uploading: int = 0
    done: int = 0
    failed: int = 0
    last_error: str | None = None
    last_error_at: float | None = None


class LeaseLostError(UploaderError):
    """A write matched nothing: another daemon took the claim over. Touch nothing more."""


class Journal(Protocol):
    """The durable record of every file a daemon (or a group of daemons) has seen."""

    async def journal_id(self) -> str:
        """This journal's identity: the same for every daemon that shares it, never reused.

        A drop folder records the journal that owns it, so that a second daemon with
        another journal is refused instead of delivering every file twice.
        """

    async def admit(self, target: str, path: str, identity: FileIdentity, now: float) -> FileRecord | None:
        """Record a ready file as pending, unless it is known.

        Returns the pending record (new, or the one already waiting, updated to this
        version), or ``None`` when the file is claimed, delivered, or this very version
        was finished and left in place (kept, or failed and unmovable).
        """

    async def is_settled(self, target: str, path: str, identity: FileIdentity) -> bool:
        """Whether this version was finished and left in place (see :data:`SETTLED_IN_PLACE`)."""

    async def claim(self, record_id: int, owner: str, now: float) -> Claim | None:
        """Take a pending row (to deliver it) or a delivered one (to file it away).

        ``None`` when the row is in no such state, or another worker holds it.
        """

    async def step_started(self, claim: Claim, step: int, plan: str, now: float) -> None:
        """Step ``step`` of step list ``plan`` is about to send: a crash now leaves its
        outcome unknown."""

    async def step_finished(
        self, claim: Claim, step: int, outputs: dict[str, Any], now: float, *, last: bool = False
    ) -> None:
        """Step ``step`` succeeded with ``outputs`` saved so far; after the ``last`` step
        the row is ``delivered`` in the same write, and never sent again."""

    async def resume_at(self, claim: Claim, step: int, outputs: dict[str, Any], now: float) -> None:
        """Set where the next attempt starts (0 with no outputs: from the beginning)."""

    async def delivered(self, claim: Claim, now: float) -> None:
        """Every step had succeeded before (a resumed delivery with nothing left to send)."""

    async def release(
        self,
        claim: Claim,
        now: float,
        *,
        failed_attempt: bool = False,
        error: str | None = None,
        status: int | None = None,
        not_before: float | None = None,
    ) -> FileRecord:
        """Back to pending, the checkpoint kept; returns the row as it now is.

        ``failed_attempt`` counts one of the file's attempts (with ``error`` and
        ``status``); otherwise nothing is counted (a login wait, an outage, a shutdown).
        ``not_before`` (wall time) is when the next attempt may start.
        """

    async def finish(
        self, claim: Claim, disposition: Disposition, destination: str | None, now: float
    ) -> None:
        """The file is filed away: ``done``."""

    async def fail(
        self,
        claim: Claim,
        error: str,
        status: int | None,
        disposition: Disposition,
        destination: str | None,
        now: float,
        *,
        attempts: int | None = None,
    ) -> None:
        """The file is given up on: ``failed``; ``attempts`` is how many it was given."""

    async def forget(self, claim: Claim, now: float) -> None:
        """The file left the drop folder before it was delivered: ``gone``."""

    async def delivered_before(self, record: FileRecord) -> bool:
        """Whether this very version of the file was delivered and filed away by another row.

        A scan that listed a file just before it was archived admits it again; its
        vanishing is then expected, not news.
        """

    # --- shared journals: what a group of daemons coordinates through ---------------

    @property
    def takeover_every(self) -> float | None:
        """How often to look for work other nodes left (:meth:`claimable`); None: never."""

    async def claimable(self, target: str) -> list[tuple[int, str]]:
        """``(record_id, path)`` of rows that any daemon may claim now."""

    def holds(self, claim: Claim) -> bool:
        """Whether the claim is alive by this daemon's own clock (checked before a move)."""

    def lease_watch(self, claim: Claim) -> asyncio.Event | None:
        """An event set when the claim is lost, for a backend whose claims can be lost."""

    def unreachable(self) -> str | None:
        """Why a journal behind a network cannot be used now (``/readyz``), or ``None``."""

    async def release_claims(self, owner: str, now: float) -> int:
        """Return every row ``owner`` held (uploading) to pending; returns how many.

        Run at start-up (a crash left them) and at a graceful stop; never touches other
        owners' claims.
        """

    async def unfinished(self, target: str) -> list[FileRecord]:
        """Pending and delivered rows of ``target``, oldest first (what a start resumes)."""

    async def get(self, record_id: int) -> FileRecord:
        """One row; ``KeyError`` when there is none."""

    async def counts(self, target: str) -> TargetCounts:
        """Rows per state and the most recent error."""

    async def records(
        self, target: str | None = None, states: Sequence[FileState] = (), limit: int | None = None
    ) -> list[FileRecord]:
        """Rows (newest first), optionally of one target and some states."""

    async def prune(self, older_than: float) -> int:
        """Delete finished rows last touched before ``older_than``, except those that stop a
        file left in place from being sent again; returns how many."""

    async def close(self) -> None:
        """Release the backend (connections, files)."""
