"""Whether the shared journal's database answers, judged by statements as they end.

A statement's outcome counts only if it was sent after the last change: as PostgreSQL
shuts down, one connection fails while a statement on another, sent earlier, still
succeeds, and the node would otherwise log unreachable, reachable, unreachable within
milliseconds. A statement that waited in the pool counts from when it got its
connection, so one that waited through the whole outage can end it.
"""

from __future__ import annotations

import math
from collections.abc import Callable


class Reachability:
    """Up or down, and since when (this node's monotonic clock)."""

    def __init__(self, monotonic: Callable[[], float]) -> None:
        self._monotonic = monotonic
        self._down = False
        self._changed_at = -math.inf

    def sent_at(self) -> float:
        """The monotonic time to note as a statement is sent (or asks the pool for a connection)."""
        return self._monotonic()

    @property
    def down_for(self) -> float | None:
        """Seconds since the outage was noticed; ``None`` while the database answers."""
        return self._monotonic() - self._changed_at if self._down else None

    def failed(self, sent_at: float) -> bool:
        """A statement sent at ``sent_at`` got no answer; True if that starts an outage."""
        if self._down or sent_at < self._changed_at:
            return False
        self._down, self._changed_at = True, self._monotonic()
        return True

    def answered(self, sent_at: float) -> float | None:
        """A statement sent at ``sent_at`` was answered; the outage's length if that ends one."""
        if not self._down or sent_at < self._changed_at:
            return None
        now = self._monotonic()
        down_for = now - self._changed_at
        self._down, self._changed_at = False, now
        return down_for
