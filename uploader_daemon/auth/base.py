"""What every credential kind offers the rest of the daemon.

A credential is obtained, kept, renewed and sometimes rejected. On the wire it is one
``httpx.Auth`` (:mod:`uploader_daemon.auth.wire`); renewal runs on a :class:`Timer`
handed to the credential when it is built, so nothing outside ``auth/`` needs to know
which kind of credential a target has.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

Job = Callable[[], Awaitable[object]]


@dataclass(frozen=True)
class AuthHeaders:
    """Headers to send, and which token generation they came from.

    The generation lets a 401 discard exactly the token that was refused, not a newer
    one another upload obtained in the meantime.
    """

    headers: Mapping[str, str] = field(repr=False)
    generation: int = 0


class Timer(Protocol):
    """Where a credential schedules its renewal checks (the daemon's scheduler)."""

    def every(self, job_id: str, seconds: float, job: Job) -> None:
        """Run ``job`` every ``seconds``."""

    def at(self, job_id: str, when: float, job: Job) -> None:
        """Run ``job`` once at wall time ``when``, replacing an earlier ``job_id``."""


class Credential(Protocol):
    """A target's credential: obtained, kept, renewed and sometimes rejected."""

    @property
    def check_every(self) -> float | None:
        """Interval of the renewal check, or ``None`` when nothing expires."""

    @property
    def expires_at(self) -> float | None:
        """When the current token expires (wall time), if there is one."""

    def start(self) -> None:
        """Pick up a still-valid token saved before a restart; start the renewal checks."""

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

    def start(self) -> None:
        """Nothing is stored and nothing expires."""

    async def headers(self) -> AuthHeaders:
        return self._headers

    def rejected(self, used: AuthHeaders) -> None:
        """Nothing to discard: the headers are configuration; the file is retried."""

    async def renew_if_due(self) -> None:
        """Static headers never expire."""
