"""The state directory: where the journal and the token store live, and who owns them.

Created with mode 0700 (tokens are in it), and tightened to 0700 when it already exists
with looser modes; every file in it is created 0600 whatever the umask (the journal holds
presigned grants and server answers). A lock file makes sure one daemon at a time uses
it: two would deliver the same files twice.
"""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path
from typing import IO

from uploader_daemon.errors import AlreadyRunningError, StateDirError


class StateDir:
    """Paths inside ``state_dir`` and the single-instance lock."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock_file: IO[str] | None = None

    @property
    def journal_path(self) -> Path:
        return self.root / "journal.sqlite3"

    @property
    def tokens_dir(self) -> Path:
        return self.root / "tokens"

    def prepare(self) -> list[str]:
        """Create the directories (0700), tighten looser ones, check that they are usable.

        Returns what was tightened (for the log); raises :class:`StateDirError`.
        """
        tightened = []
        for directory in (self.root, self.tokens_dir):
            try:
                directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as error:
                raise StateDirError(
                    f"cannot create state_dir {directory}: {error.strerror}; create it for the "
                    "daemon's user or change state_dir"
                ) from None
            if not os.access(directory, os.R_OK | os.W_OK | os.X_OK):
                raise StateDirError(f"state_dir {directory} is not writable by this user; fix its owner")
            mode = stat.S_IMODE(directory.stat().st_mode)
            if mode & 0o077:
                try:
                    directory.chmod(0o700)
                except OSError as error:
                    raise StateDirError(
                        f"state_dir {directory} is readable by other users (mode {mode:o}) and cannot be "
                        f"tightened ({error.strerror}); run chmod 700 {directory}"
                    ) from None
                tightened.append(f"{directory} from {mode:o} to 700")
        for path in (self.journal_path, self.root / "lock"):
            tightened += _private(path)
        try:
            # SQLite creates its -wal and -shm files with the database file's mode.
            os.close(create_private(self.journal_path))
        except OSError as error:
            raise StateDirError(f"cannot create the journal {self.journal_path}: {error.strerror}") from None
        return tightened

    def lock(self) -> None:
        """Take the single-instance lock; raises :class:`AlreadyRunningError`."""
        path = self.root / "lock"
        try:
            handle = os.fdopen(create_private(path), "r+", encoding="utf-8")
        except OSError as error:
            raise StateDirError(f"cannot open the lock file {path}: {error.strerror}") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise AlreadyRunningError(
                f"another uploader-daemon is already using {self.root}; stop it first "
                "(systemctl stop uploader-daemon) or give this one its own state_dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._lock_file = handle

    def unlock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None


def create_private(path: Path) -> int:
    """Open ``path`` for reading and writing, created 0600 if missing (whatever the umask)."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    os.fchmod(descriptor, 0o600)
    return descriptor


def _private(path: Path) -> list[str]:
    """Tighten an existing state file (and SQLite's -wal/-shm) to 0600; says what changed."""
    changed = []
    for candidate in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            mode = stat.S_IMODE(candidate.stat().st_mode)
        except FileNotFoundError:
            continue
        if mode & 0o077:
            candidate.chmod(0o600)
            changed.append(f"{candidate} from {mode:o} to 600")
    return changed
