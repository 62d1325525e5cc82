"""One folder, one journal: each drop folder says which journal delivers its files.

Two daemons with two journals on one folder would each deliver every file. So every
daemon marks each drop folder it watches with an extended attribute of the folder itself
(``user.uploader-daemon``: the journal's id, the node, the pid, when it was last
refreshed), refreshed every minute; a daemon whose journal differs from a fresh mark's is
refused at start. Daemons that share one journal (``journal.backend: postgresql``) share
its id, and so the folder. An attribute, not a file: nothing appears among the files
producers and admins see, and it travels with the folder (ext4, XFS, Btrfs, tmpfs, NFS
4.2, SMB with user xattrs). Where the filesystem has no user attributes the daemon says so
at start and runs without the check.

A mark is stale (and taken over) when it was not refreshed for three minutes, when it
says its daemon stopped, or when it names a process of this host that is gone.
Coordination across hosts is not the mark's job: it only refuses a mistake.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from uploader_daemon.clock import Clock, iso_utc
from uploader_daemon.errors import AlreadyRunningError

ATTRIBUTE = "user.uploader-daemon"
REFRESH_EVERY = 60.0
STALE_AFTER = 3 * REFRESH_EVERY


@dataclass(frozen=True)
class Marker:
    journal_id: str
    node: str
    pid: int
    updated_at: float
    stopped: bool = False


class FolderMarkers:
    """The markers of one daemon's drop folders."""

    def __init__(self, folders: list[Path], journal_id: str, node: str, clock: Clock) -> None:
        self._folders = list(folders)
        self._journal_id = journal_id
        self._node = node
        self._clock = clock

    def claim(self) -> list[str]:
        """Mark every folder as this journal's; returns warnings (a folder that cannot be marked).

        Raises :class:`AlreadyRunningError` when a folder is fresh-marked by another journal.
        """
        self._refuse_foreign(self._folders)
        return self.refresh()

    def add(self, folder: Path) -> list[str]:
        """A target added by a reload: mark its folder too (same rules as :meth:`claim`)."""
        self._refuse_foreign([folder])
        if folder not in self._folders:
            self._folders.append(folder)
        return self.refresh()

    def remove(self, folder: Path) -> None:
        """A target removed by a reload: its folder's mark says this daemon left it."""
        if folder in self._folders:
            self._folders.remove(folder)
            found = read_marker(folder)
            if found is not None and (found.node, found.pid) == (self._node, os.getpid()):
                with contextlib.suppress(OSError):
                    _write(folder, Marker(found.journal_id, found.node, found.pid, found.updated_at, True))

    def _refuse_foreign(self, folders: list[Path]) -> None:
        for folder in folders:
            found = read_marker(folder)
            if found is not None and self._belongs_elsewhere(found):
                raise AlreadyRunningError(
                    f"{folder} is watched by another uploader-daemon with another journal (node "
                    f"{found.node}, pid {found.pid}, last seen {iso_utc(found.updated_at)}); two journals "
                    "on one folder deliver every file twice: stop that daemon, or let both share one "
                    "journal (journal.backend: postgresql), or, if it is gone for good, remove the "
                    f"mark: setfattr -x {ATTRIBUTE} {folder}"
                )

    def refresh(self, *, stopped: bool = False) -> list[str]:
        """Rewrite every marker with the current time; returns warnings, never raises."""
        warnings = []
        for folder in self._folders:
            mine = Marker(self._journal_id, self._node, os.getpid(), self._clock.now(), stopped)
            try:
                _write(folder, mine)
            except OSError as error:
                warnings.append(
                    f"cannot mark {folder} with the attribute {ATTRIBUTE} ({error.strerror or error}): a "
                    "second daemon with another journal would not be refused on this folder"
                )
        return warnings

    def release(self) -> None:
        """On a graceful stop: markers this process wrote last say it stopped."""
        for folder in self._folders:
            found = read_marker(folder)
            if found is not None and (found.node, found.pid) == (self._node, os.getpid()):
                with contextlib.suppress(OSError):
                    _write(
                        folder,
                        Marker(found.journal_id, found.node, found.pid, found.updated_at, True),
                    )

    def _belongs_elsewhere(self, found: Marker) -> bool:
        if found.journal_id == self._journal_id or found.stopped:
            return False
        if self._clock.now() - found.updated_at >= STALE_AFTER:
            return False
        if found.node != self._node:
            return True
        # This host: a process that is gone (or this very one, run before) holds nothing.
        return found.pid != os.getpid() and _alive(found.pid)


def read_marker(folder: Path) -> Marker | None:
    """The folder's mark, or ``None`` when there is none (or it is unreadable or damaged)."""
    try:
        data = json.loads(os.getxattr(folder, ATTRIBUTE))
        return Marker(
            journal_id=str(data["journal_id"]),
            node=str(data["node"]),
            pid=int(data["pid"]),
            updated_at=float(data["updated_at"]),
            stopped=bool(data.get("stopped", False)),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write(folder: Path, marker: Marker) -> None:
    value = {
        "journal_id": marker.journal_id,
        "node": marker.node,
        "pid": marker.pid,
        "updated_at": marker.updated_at,
        "stopped": marker.stopped,
    }
    os.setxattr(folder, ATTRIBUTE, json.dumps(value).encode())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
