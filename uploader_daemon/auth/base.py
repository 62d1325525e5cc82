"""What every credential kind offers the rest of the daemon."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class AuthHeaders:
    """Headers to send, and which token generation they came from.

    The generation lets a 401 discard exactly the token that was refused, not a newer
    one another upload obtained in the meantime.
    """

    headers: Mapping[str, str] = field(repr=False)
    generation: int = 0


class Credential(Protocol):
    """A target's credential: obtained, kept, renewed and sometimes rejected."""

    @property
    def check_every(self) -> float | None:
        """Interval of the scheduler's renewal check, or ``None`` when nothing expires."""

    @property
    def expires_at(self) -> float | None:
        """When the current token expires (wall time), if there is one."""

    def restore(self) -> None:
        """Pick up a still-valid token saved before a restart."""

    async def headers(self) -> AuthHeaders:
        """Headers for the next request, logging in first when needed.

        Raises :class:`~uploader_daemon.errors.LoginFailedError`.
        """

    def rejected(self, used: AuthHeaders) -> None:
        """The API answered 401 to a request sent with ``used``."""

    async def renew_if_due(self) -> None:
        """The scheduled check: renew when near expiry and the API is in use. Never raises."""


class StaticCredential:
    """Fixed headers (``type: headers``) or none at all (``type: none``)."""

    check_every = None
    expires_at = None

    def __init__(self, headers: Mapping[str, str]) -> None:
        self._headers = AuthHeaders(dict(headers))

    def restore(self) -> None:
        """Nothing is stored for static headers."""

    async def headers(self) -> AuthHeaders:
        return self._headers

    def rejected(self, used: AuthHeaders) -> None:
        """Nothing to discard: the headers are configuration; the file is retried."""

    async def renew_if_due(self) -> None:
        """Static headers never expire."""
