"""Time as a dependency, so token timing can be tested without waiting for real expiries.

Two kinds of time, never mixed: **wall time** (seconds since the epoch) for what is shown
or stored (token expiries, journal timestamps, sidecars), and **monotonic time** for
delays, backoff and durations, which must not jump when an admin or NTP sets the clock.
"""

from __future__ import annotations

import datetime
import time
from typing import Protocol


class Clock(Protocol):
    """The daemon's two clocks."""

    def now(self) -> float:
        """Wall-clock seconds since the epoch (token expiries are absolute wall times)."""

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps (delays, backoff, durations)."""


class SystemClock:
    """The real clocks."""

    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


def iso_utc(timestamp: float) -> str:
    """A wall time as ISO 8601 in UTC, to the second (logs, sidecars, ``status``)."""
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).isoformat(timespec="seconds")
