"""Whether a target's API is in active use: the rule that decides token renewal."""

from __future__ import annotations

from collections.abc import Callable

from uploader_daemon.clock import Clock


class ApiActivity:
    """Remembers when the API was last used and asks whether files are waiting.

    A token is renewed only while the API is in use: an upload happened within
    ``active_within``, or files are waiting to go. An idle daemon lets it lapse.
    """

    def __init__(self, clock: Clock, files_waiting: Callable[[], bool] = lambda: False) -> None:
        self._clock = clock
        self._files_waiting = files_waiting
        self.last_used_at: float | None = None

    def watch_queue(self, files_waiting: Callable[[], bool]) -> None:
        """Tell the tracker how to ask whether files are waiting (set once wired)."""
        self._files_waiting = files_waiting

    def touch(self) -> None:
        """The API was just used for a delivery."""
        self.last_used_at = self._clock.now()

    def is_active(self, within: float) -> bool:
        if self._files_waiting():
            return True
        return self.last_used_at is not None and self._clock.now() - self.last_used_at <= within
