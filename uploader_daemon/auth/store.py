"""Tokens on disk, so a restart inside a token's lifetime needs no new login.

One JSON file per target in ``state_dir/tokens``, mode 0600, replaced atomically (write
a temporary file, fsync, rename), so a crash leaves the old token or the new one, never
half of either. Each file records the identity it was issued for (API, user, kind): a
token for another account or API is never reused after a config change.

The store is shared by the daemon and ``uploader-daemon upload`` running beside it:
writes take an exclusive ``flock`` on the tokens folder itself (no lock file to leave
behind; writes are rare, so one lock for every target costs nothing), and a write never replaces a
token obtained later than the one being written (the slower process keeps its token in
memory; the file keeps the newest). A file written by root (``sudo uploader-daemon
upload``) is handed to the owner of the tokens folder, so the daemon can still read it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

from uploader_daemon.auth.grant import TokenGrant
from uploader_daemon.logs import get_logger

log = get_logger(__name__)


class TokenStore:
    """Persisted grant of one target."""

    def __init__(self, directory: Path, target: str, identity: str) -> None:
        self.path = directory / f"{target}.json"
        self._identity = identity

    def load(self) -> TokenGrant | None:
        """The stored grant for this identity, or ``None`` (missing, other identity, corrupt)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            log.warning("token_store_unreadable", path=str(self.path), error=str(error))
            return None
        if not isinstance(data, dict) or data.get("identity") != self._identity:
            return None
        token, refresh_token = data.get("token"), data.get("refresh_token")
        # A damaged file must mean "log in again", never a bogus token such as "None".
        if not isinstance(token, str) or not token or not isinstance(refresh_token, str | None):
            return None
        try:
            return TokenGrant(
                token=token,
                expires_at=float(data["expires_at"]),
                obtained_at=float(data["obtained_at"]),
                refresh_token=refresh_token,
            )
        except (KeyError, TypeError, ValueError):
            return None

    def save(self, grant: TokenGrant) -> None:
        """Replace the stored grant atomically with mode 0600, unless it holds a newer one."""
        try:
            with self._locked():
                stored = self.load()
                if stored is not None and stored.obtained_at > grant.obtained_at:
                    return  # another process logged in after us: its token is the one to keep
                self._write(grant)
        except OSError as error:
            # Losing the stored token only costs a login after a restart: keep running.
            log.warning("token_store_write_failed", path=str(self.path), error=error.strerror)

    def _write(self, grant: TokenGrant) -> None:
        record = {
            "identity": self._identity,
            "token": grant.token,
            "expires_at": grant.expires_at,
            "obtained_at": grant.obtained_at,
            "refresh_token": grant.refresh_token,
        }
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            # A temporary file left by a crashed process with the same pid would keep its
            # old mode through O_TRUNC: start from a fresh file, created 0600.
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            _give_to_folder_owner(descriptor, self.path.parent)
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                json.dump(record, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise

    def clear(self) -> None:
        try:
            with self._locked():
                self.path.unlink(missing_ok=True)
        except OSError as error:
            log.warning("token_store_write_failed", path=str(self.path), error=error.strerror)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the store's write lock (other processes' writes wait, for milliseconds)."""
        descriptor = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)  # closing releases the lock


def _give_to_folder_owner(descriptor: int, folder: Path) -> None:
    """As root, make a new file the folder owner's: the daemon's user must read it later."""
    if os.geteuid() != 0:
        return
    owner = os.stat(folder)
    if owner.st_uid != 0:
        os.fchown(descriptor, owner.st_uid, owner.st_gid)
