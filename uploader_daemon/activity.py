"""Whether a target's API is in active use: the rule that decides token renewal."""

from __future__ import annotations

from collections.abc import Callable

from uploader_daemon.clock import Clock


def _nothing_waiting() -> bool:
    return False


class ApiActivity:
    """Remembers when the API was last used and asks whether files are waiting.

    A token is renewed only while the API is in use: a credentialed request was answered
    within ``active_within``, or files are waiting to go (``files_waiting``, the target's
    schedule). An idle daemon lets it lapse.
    """

    def __init__(self, clock: Clock, files_waiting: Callable[[], bool] = _nothing_waiting) -> None:
        self._clock = clock
        self._files_waiting = files_waiting
        self.last_used_at: float | None = None  # monotonic time

    def touch(self) -> None:
        """The API just answered a request that carried the credential."""
        self.last_used_at = self._clock.monotonic()

    def is_active(self, within: float) -> bool:
        if self._files_waiting():
            return True
        return self.last_used_at is not None and self._clock.monotonic() - self.last_used_at <= within
