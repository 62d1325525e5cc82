"""Whether a target's API answers, and what the target does while it does not.

**What counts as an outage**: an attempt that got no answer at all (connection refused
or reset, DNS failure, TLS failure, timeout) or an answer that speaks for the whole
service (429 Too Many Requests, 502, 503, 504), from the API or its storage; and a
login that failed or was refused. Every other answer, 500 included, is about the file.

During an outage no file spends an attempt: the file that met it goes back to the
queue, and the target holds every file (:meth:`Schedule.hold`). After an exponential
backoff (``retry.backoff`` doubling up to ``retry.max_backoff``, ``Retry-After`` a
floor) one file goes out as the probe; any other answer from the API ends the outage
and every file goes again. A single failure is only a suspicion (one probe decides); the
outage is logged once when the probe confirms it (error) and once when it ends (info,
with its duration).
"""

from __future__ import annotations

import asyncio

from uploader_daemon.backoff import backoff_delay
from uploader_daemon.clock import Clock
from uploader_daemon.config.schema import RetrySettings
from uploader_daemon.logs import get_logger
from uploader_daemon.monitor import QUIET, TargetEvents
from uploader_daemon.pool.schedule import Schedule

log = get_logger(__name__)


class ApiGate:
    """One target's view of its API: up, suspected down, or down since a time."""

    def __init__(
        self,
        target: str,
        retry: RetrySettings,
        schedule: Schedule,
        clock: Clock,
        events: TargetEvents = QUIET,
    ) -> None:
        self._retry = retry
        self._schedule = schedule
        self._clock = clock
        self._events = events
        self._log = log.bind(target=target)
        self._failures = 0  # consecutive outage findings of probes (0: the API answers)
        self._held_at = 0.0  # monotonic: attempts started before were in flight when it broke
        self._first_failure_at = 0.0  # monotonic
        self._down_since: float | None = None  # wall time the outage was confirmed from
        self.reason: str | None = None

    @property
    def down(self) -> bool:
        """The outage is confirmed (the API is reported down)."""
        return self._down_since is not None

    @property
    def failures(self) -> int:
        """How many probes in a row found the API not answering (0: it answers)."""
        return self._failures

    @property
    def down_since(self) -> float | None:
        """Wall time the API stopped answering (when confirmed)."""
        return self._down_since

    def unavailable(
        self,
        reason: str,
        *,
        started: float,
        retry_after: float | None = None,
        until: float | None = None,
        confirmed: bool = False,
    ) -> float:
        """An attempt that began at monotonic ``started`` met the API not answering.

        The target is held; the next probe goes after the backoff, or at monotonic
        ``until`` when the wait is known (a login's own backoff). ``confirmed`` declares the
        outage at once (a refused login needs no second opinion). Returns the seconds
        until the probe.
        """
        now = self._clock.monotonic()
        in_flight_casualty = self._failures > 0 and started < self._held_at
        if not in_flight_casualty:
            if self._failures == 0:
                self._first_failure_at = now
            self._failures += 1
        self.reason = reason
        if until is not None:
            delay = max(0.0, until - now)
        else:
            delay = backoff_delay(
                self._failures, self._retry.backoff, self._retry.max_backoff, retry_after=retry_after
            )
        if not self.down and (confirmed or self._failures >= 2):
            # Wall time of the first failure: that is when the API stopped answering.
            self._down_since = self._clock.now() - (now - self._first_failure_at)
            self._log.error(
                "api_outage_started",
                reason=reason,
                action="holding every file without using its attempts; probing with one file at a time",
                probe_in=round(delay, 1),
            )
            self._events.api_down(reason, self._down_since)
        elif self._failures == 1 and not in_flight_casualty:
            self._log.info("api_unavailable", reason=reason, probe_in=round(delay, 1))
        elif not in_flight_casualty:
            self._log.debug(
                "api_probe_failed", reason=reason, failures=self._failures, probe_in=round(delay, 1)
            )
        if not in_flight_casualty:
            self._held_at = now
            self._schedule.hold(asyncio.get_running_loop().time() + delay)
        return delay

    def answered(self) -> None:
        """An attempt got an answer from the API: the outage, if any, is over."""
        if self._failures == 0:
            return
        if self.down:
            down_for = self._clock.monotonic() - self._first_failure_at
            self._log.info("api_outage_ended", down_for=round(down_for, 1), reason=self.reason)
            self._events.api_up(down_for)
        self._failures = 0
        self._down_since = None
        self.reason = None
        self._schedule.resume()

    def inconclusive(self) -> None:
        """The probe never reached the API (the file vanished...): let another one go."""
        if self._failures > 0:
            self._schedule.hold(asyncio.get_running_loop().time())
