"""What a target reports as it works, for whoever watches: metrics, alert hooks, status.

The pool, the credential and the steps call these methods when something worth counting
happens; they never wait on them and never see them fail (each listener swallows and
logs its own errors). Listeners are combined with :class:`Fanout`; the default is
:data:`QUIET`, which hears nothing. Gauges that must be true at scrape time (files
pending, in flight, token expiry) are not events: the listener reads them from the
target (``TargetService.snapshot()``).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Protocol


class Outcome(enum.StrEnum):
    """How a login or a token refresh ended."""

    SUCCESS = "success"
    REJECTED = "rejected"  # the identity service refused the credentials (check the password)
    FAILED = "failed"  # no usable answer (network, 5xx, a malformed body)


class TargetEvents(Protocol):
    """One target's events (see the module docstring)."""

    def request_answered(self, step: str, status: int | None) -> None:
        """A request of ``step`` (``login``/``refresh`` for the credential) got ``status``;
        ``None`` when no answer came (refused, reset, timed out)."""

    def file_delivered(self, path: str, size: int, seconds: float | None) -> None:
        """A file was delivered (every step succeeded) and filed away."""

    def file_parked(self, path: str, failed_path: str | None, reason: str) -> None:
        """A file was given up on; ``failed_path`` is where it went (``None``: left in place)."""

    def login_finished(self, outcome: Outcome) -> None: ...

    def refresh_finished(self, outcome: Outcome) -> None: ...

    def api_down(self, reason: str, since: float) -> None:
        """The API became unreachable or refused the login, since wall time ``since``."""

    def api_up(self, down_for: float) -> None:
        """The API answers again after ``down_for`` seconds."""


class Listener(Protocol):
    """Hands out the events object of each target."""

    def target(self, name: str) -> TargetEvents: ...


class _Quiet:
    """Hears nothing."""

    def request_answered(self, step: str, status: int | None) -> None:
        return None

    def file_delivered(self, path: str, size: int, seconds: float | None) -> None:
        return None

    def file_parked(self, path: str, failed_path: str | None, reason: str) -> None:
        return None

    def login_finished(self, outcome: Outcome) -> None:
        return None

    def refresh_finished(self, outcome: Outcome) -> None:
        return None

    def api_down(self, reason: str, since: float) -> None:
        return None

    def api_up(self, down_for: float) -> None:
        return None

    def target(self, name: str) -> TargetEvents:
        return self


QUIET = _Quiet()


class Fanout:
    """Several listeners as one."""

    def __init__(self, listeners: Sequence[Listener]) -> None:
        self._listeners = tuple(listeners)

    def target(self, name: str) -> TargetEvents:
        return _TargetFanout([listener.target(name) for listener in self._listeners])


class _TargetFanout:
    def __init__(self, events: Sequence[TargetEvents]) -> None:
        self._events = tuple(events)

    def request_answered(self, step: str, status: int | None) -> None:
        for events in self._events:
            events.request_answered(step, status)

    def file_delivered(self, path: str, size: int, seconds: float | None) -> None:
        for events in self._events:
            events.file_delivered(path, size, seconds)

    def file_parked(self, path: str, failed_path: str | None, reason: str) -> None:
        for events in self._events:
            events.file_parked(path, failed_path, reason)

    def login_finished(self, outcome: Outcome) -> None:
        for events in self._events:
            events.login_finished(outcome)

    def refresh_finished(self, outcome: Outcome) -> None:
        for events in self._events:
            events.refresh_finished(outcome)

    def api_down(self, reason: str, since: float) -> None:
        for events in self._events:
            events.api_down(reason, since)

    def api_up(self, down_for: float) -> None:
        for events in self._events:
            events.api_up(down_for)
