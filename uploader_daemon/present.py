"""What each target is doing now, as a running daemon sees it, and as ``status`` reads it back.

Three pieces:

- :class:`TargetSnapshot`: the live state a target hands out (``TargetService.snapshot()``):
  files scheduled and in flight, the token's expiry, the API gate's outage.
- :class:`TargetRecorder`: a :class:`~uploader_daemon.monitor.TargetEvents` listener that
  remembers what the live state forgets: when the last file was delivered, and why the
  credential is in the state it is in (a refused password, a refused token).
- :class:`PresentFile`: ``state_dir/present.json`` (mode 0600), the daemon's present
  state for ``status``, which runs in another process. Written on change, at most once a
  second, and once more on the way out (``running: false``).

The credential's state is one of :class:`CredentialState`, derived in one place
(:func:`credential_view`), so ``status``, ``STATUS=`` and the metrics never disagree.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import tempfile
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from uploader_daemon.clock import Clock, iso_utc
from uploader_daemon.monitor import Outcome

FILE_NAME = "present.json"
_CREDENTIAL_STEPS = frozenset({"login", "refresh"})


class CredentialState(enum.StrEnum):
    """What the credential is doing, with its cause."""

    LOGGED_IN = "logged_in"  # a token valid until ``until``
    TOKEN_EXPIRED = "token_expired"  # lapsed while idle; the next file logs in again
    NOT_LOGGED_IN = "not_logged_in"  # no token yet (nothing needed the API)
    LOGIN_REFUSED = "login_refused"  # the identity service refused the password (since ``since``)
    TOKEN_REFUSED = "token_refused"  # the API answered 401 to the token; the next file logs in again
    API_UNREACHABLE = "api_unreachable"  # no answer from the API (since ``since``)
    STATIC = "static"  # fixed headers or no credential: nothing to log in to


@dataclass(frozen=True)
class TargetSnapshot:
    """A target's live state at one moment (cheap: read from memory)."""

    name: str
    scheduled: int  # waiting, backing off or in flight
    in_flight: int
    watching: bool  # its folder is watched (start-up finished, not stopping)
    token_expires_at: float | None
    logs_in: bool  # the credential is a login (token, cognito), not static headers
    api_down_since: float | None  # wall time; None while the API answers
    api_down_reason: str | None


@dataclass(frozen=True)
class CredentialView:
    state: CredentialState
    since: float | None = None  # wall time the state began (refusals, outages)
    until: float | None = None  # wall time a token expires
    detail: str | None = None  # the outage's reason

    def sentence(self) -> str:
        """The state in words, for ``status`` and ``STATUS=``."""
        since = f" since {iso_utc(self.since)}" if self.since is not None else ""
        if self.state is CredentialState.LOGGED_IN:
            return f"logged in until {iso_utc(self.until)}" if self.until is not None else "logged in"
        if self.state is CredentialState.TOKEN_EXPIRED:
            expired = f" at {iso_utc(self.until)}" if self.until is not None else ""
            return f"token expired{expired} while idle; the next file logs in again"
        if self.state is CredentialState.NOT_LOGGED_IN:
            return "not logged in yet; the next file logs in"
        if self.state is CredentialState.LOGIN_REFUSED:
            return f"login refused{since}: check the username and password"
        if self.state is CredentialState.TOKEN_REFUSED:
            return f"token refused{since} (the API answered 401); the next file logs in again"
        if self.state is CredentialState.API_UNREACHABLE:
            reason = f" ({self.detail})" if self.detail else ""
            return f"API unreachable{since}{reason}"
        return "static credential: nothing to log in to"


class TargetRecorder:
    """Remembers one target's last delivery and the cause of its credential's state.

    ``credential_steps`` are the steps that carry the credential: a 401 to one of them
    means the token was refused (a 401 from a storage host says nothing of the token).
    """

    def __init__(self, clock: Clock, credential_steps: Collection[str]) -> None:
        self._clock = clock
        self._credential_steps = frozenset(credential_steps)
        self.last_delivery_at: float | None = None
        self.deliveries = 0
        self.parked = 0
        self.login_refused_since: float | None = None  # the first refusal in a row
        self.token_refused_at: float | None = None  # after the last successful login

    def request_answered(self, step: str, status: int | None) -> None:
        if status == 401 and step in self._credential_steps and step not in _CREDENTIAL_STEPS:
            self.token_refused_at = self._clock.now()

    def file_delivered(self, path: str, size: int, seconds: float | None) -> None:
        self.last_delivery_at = self._clock.now()
        self.deliveries += 1

    def file_parked(self, path: str, failed_path: str | None, reason: str) -> None:
        self.parked += 1

    def login_finished(self, outcome: Outcome) -> None:
        if outcome is Outcome.SUCCESS:
            self.login_refused_since = None
            self.token_refused_at = None
        elif outcome is Outcome.REJECTED and self.login_refused_since is None:
            self.login_refused_since = self._clock.now()

    def refresh_finished(self, outcome: Outcome) -> None:
        if outcome is Outcome.SUCCESS:
            self.token_refused_at = None
        elif outcome is Outcome.REJECTED:
            self.token_refused_at = self._clock.now()

    def api_down(self, reason: str, since: float) -> None:
        return None  # the gate keeps the outage; the snapshot reads it

    def api_up(self, down_for: float) -> None:
        return None


def credential_view(snapshot: TargetSnapshot, recorder: TargetRecorder, now: float) -> CredentialView:
    """The credential's state and its cause (see :class:`CredentialState`).

    A refused password outranks an outage (the gate holds the target for both, and the
    password is what the admin must fix); an outage outranks a token (nothing can be
    known of a token while the API does not answer).
    """
    if recorder.login_refused_since is not None:
        return CredentialView(CredentialState.LOGIN_REFUSED, since=recorder.login_refused_since)
    if snapshot.api_down_since is not None:
        return CredentialView(
            CredentialState.API_UNREACHABLE, since=snapshot.api_down_since, detail=snapshot.api_down_reason
        )
    expires_at = snapshot.token_expires_at
    if recorder.token_refused_at is not None and expires_at is None:
        return CredentialView(CredentialState.TOKEN_REFUSED, since=recorder.token_refused_at)
    if not snapshot.logs_in:
        return CredentialView(CredentialState.STATIC)
    if expires_at is None:
        return CredentialView(CredentialState.NOT_LOGGED_IN)
    if expires_at <= now:
        return CredentialView(CredentialState.TOKEN_EXPIRED, until=expires_at)
    return CredentialView(CredentialState.LOGGED_IN, until=expires_at)


@dataclass(frozen=True)
class TargetPresent:
    """One target's present state, as written to ``present.json``."""

    name: str
    watching: bool
    scheduled: int
    in_flight: int
    credential: CredentialState
    credential_sentence: str
    credential_since: float | None
    token_expires_at: float | None
    api_up: bool
    api_down_since: float | None
    api_down_reason: str | None
    last_delivery_at: float | None


@dataclass(frozen=True)
class DaemonPresent:
    """The daemon's present state: who it is, and each target's."""

    node: str
    pid: int
    started_at: float
    written_at: float
    running: bool
    targets: tuple[TargetPresent, ...] = field(default=())

    def without_time(self) -> DaemonPresent:
        """The same facts with ``written_at`` zeroed: what decides whether to write again."""
        return DaemonPresent(self.node, self.pid, self.started_at, 0.0, self.running, self.targets)


def target_present(snapshot: TargetSnapshot, recorder: TargetRecorder, now: float) -> TargetPresent:
    view = credential_view(snapshot, recorder, now)
    return TargetPresent(
        name=snapshot.name,
        watching=snapshot.watching,
        scheduled=snapshot.scheduled,
        in_flight=snapshot.in_flight,
        credential=view.state,
        credential_sentence=view.sentence(),
        credential_since=view.since,
        token_expires_at=snapshot.token_expires_at,
        api_up=snapshot.api_down_since is None,
        api_down_since=snapshot.api_down_since,
        api_down_reason=snapshot.api_down_reason,
        last_delivery_at=recorder.last_delivery_at,
    )


class PresentFile:
    """``state_dir/present.json``: written atomically (0600), read by ``status``."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / FILE_NAME

    def write(self, present: DaemonPresent) -> None:
        """Replace the file (blocking: call it in a thread). Raises OSError."""
        data = json.dumps(asdict(present), indent=1, sort_keys=True).encode()
        descriptor, temporary = tempfile.mkstemp(prefix=".present.", dir=self.path.parent)
        try:
            with os.fdopen(descriptor, "wb") as handle:  # mkstemp creates it 0600
                handle.write(data)
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    def read(self) -> DaemonPresent | None:
        """The last state written, or ``None`` when there is none or it cannot be read."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return _parse(data)
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _parse(data: dict[str, Any]) -> DaemonPresent:
    targets = tuple(
        TargetPresent(**{**target, "credential": CredentialState(target["credential"])})
        for target in data["targets"]
    )
    return DaemonPresent(
        node=str(data["node"]),
        pid=int(data["pid"]),
        started_at=float(data["started_at"]),
        written_at=float(data["written_at"]),
        running=bool(data["running"]),
        targets=targets,
    )


def process_alive(pid: int) -> bool:
    """Whether a process with ``pid`` exists (whoever owns it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, as another user's process
    return True
