"""The state directory: where the journal and the token store live, and who owns them.

Created with mode 0700 (tokens are in it). A lock file makes sure one daemon at a time
uses it: two would deliver the same files twice.
"""

from __future__ import annotations

import fcntl
import os
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

    def prepare(self) -> None:
        """Create the directories (0700) and check that they are usable."""
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

    def lock(self) -> None:
        """Take the single-instance lock; raises :class:`AlreadyRunningError`."""
        path = self.root / "lock"
        try:
            handle = path.open("a+", encoding="utf-8")
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
