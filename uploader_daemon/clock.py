"""Time as a dependency, so token timing can be tested without waiting for real expiries."""

from __future__ import annotations

import datetime
import time
from typing import Protocol


class Clock(Protocol):
    """Wall-clock seconds since the epoch (token expiries are absolute wall times)."""

    def now(self) -> float: ...


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        return time.time()


def iso_utc(timestamp: float) -> str:
    """A wall time as ISO 8601 in UTC, to the second (logs, sidecars, ``status``)."""
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).isoformat(timespec="seconds")
