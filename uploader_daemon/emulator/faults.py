"""Outages the whole emulator can be switched into, for tests of a daemon under stress.

Three switches, each thread-safe and each undone by its own call (see ``Emulator``):

* refused connections (``refuse_connections``/``accept_connections``) live in the
  server, since they close and reopen the listening socket;
* ``fail_all(status, retry_after)``: every request, on every route, is answered with
  that status and a small body, and nothing else happens (no counter but
  ``outage_answers`` moves, no script is used up, nothing is stored);
* ``hang_all(seconds)``: every request is read, then left without an answer for
  ``seconds`` and its connection closed; clients time out. Switching it off, stopping
  the emulator or refusing connections releases the requests already hanging.

A hang wins over a failure when both are on. This module keeps the switches; the
request handler in ``server`` asks them before each answer.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

# HTTP status codes are three digits; anything else would not even parse as a status line.
_LOWEST_STATUS, _HIGHEST_STATUS = 100, 999


@dataclass(frozen=True)
class Outage:
    """What ``fail_all`` answers: ``status`` and, if set, a Retry-After header.

    ``retry_after`` is sent as given: an int is seconds, a str is sent verbatim (an
    HTTP date, or garbage for a test of a hostile server).

    Raises:
        ValueError: the status is not a three-digit number.
    """

    status: int
    retry_after: int | str | None = None

    def __post_init__(self) -> None:
        if not _LOWEST_STATUS <= self.status <= _HIGHEST_STATUS:
            raise ValueError(f"an HTTP status has three digits, not {self.status}")

    def headers(self) -> dict[str, str]:
        """The headers to send besides the body's own."""
        return {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}


@dataclass(frozen=True)
class Hang:
    """A hang in force: how long each request waits, and which switch-on it belongs to."""

    seconds: float
    period: int


class FaultSwitches:
    """The ``fail_all`` and ``hang_all`` switches; safe to flip from any thread."""

    def __init__(self) -> None:
        self._changed = threading.Condition(threading.Lock())
        self._outage: Outage | None = None
        self._hang_seconds: float | None = None
        # Bumped whenever the hang is switched off or changed, which releases every
        # request held under the previous setting.
        self._hang_period = 0

    def fail_all(self, outage: Outage | None) -> None:
        """Answer every request with ``outage`` from now on; None ends the outage."""
        with self._changed:
            self._outage = outage

    def outage(self) -> Outage | None:
        """The outage in force, if any."""
        with self._changed:
            return self._outage

    def hang_all(self, seconds: float | None) -> None:
        """Leave every request unanswered for ``seconds`` from now on; None ends it.

        Raises:
            ValueError: ``seconds`` is not positive.
        """
        if seconds is not None and not seconds > 0:
            raise ValueError(f"hang_all needs a positive number of seconds, not {seconds}")
        with self._changed:
            self._hang_seconds = seconds
            self._hang_period += 1
            self._changed.notify_all()

    def hang(self) -> Hang | None:
        """The hang in force, if any; pass it to ``hold``."""
        with self._changed:
            if self._hang_seconds is None:
                return None
            return Hang(self._hang_seconds, self._hang_period)

    def hold(self, hang: Hang, closing: threading.Event) -> None:
        """Block for ``hang.seconds``, or less if the hang is switched off or ``closing`` is set.

        Whoever sets ``closing`` must call ``wake()`` afterwards so the wait notices.
        """
        with self._changed:
            self._changed.wait_for(lambda: closing.is_set() or self._hang_period != hang.period, hang.seconds)

    def wake(self) -> None:
        """Make every ``hold`` re-check its conditions (after a ``closing`` event was set)."""
        with self._changed:
            self._changed.notify_all()
