"""Tokens on disk, so a restart inside a token's lifetime needs no new login.

One JSON file per target in ``state_dir/tokens``, mode 0600, replaced atomically (write
a temporary file, fsync, rename), so a crash leaves the old token or the new one, never
half of either. Each file records the identity it was issued for (API, user, kind): a
token for another account or API is never reused after a config change.
"""

from __future__ import annotations

import contextlib
import json
import os
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
        """Replace the stored grant atomically with mode 0600."""
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
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                json.dump(record, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)
        except OSError as error:
            # Losing the stored token only costs a login after a restart: keep running.
            log.warning("token_store_write_failed", path=str(self.path), error=error.strerror)
            with contextlib.suppress(OSError):
                temporary.unlink()

    def clear(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
