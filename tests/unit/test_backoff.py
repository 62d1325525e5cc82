"""Backoff between retries: doubling, capped, jittered, and respectful of Retry-After."""

from __future__ import annotations

import random

import pytest

from uploader_daemon.backoff import MAX_RETRY_AFTER, backoff_delay


class Extremes(random.Random):
    """A generator that always draws the low or the high end of the range."""

    def __init__(self, high: bool) -> None:
        super().__init__(0)
        self.high = high

    def uniform(self, a: float, b: float) -> float:
        return b if self.high else a


@pytest.mark.parametrize(("attempt", "ceiling"), [(1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0), (5, 32.0)])
def test_the_delay_doubles_with_each_attempt(attempt: int, ceiling: float) -> None:
    """With no jitter drawn, attempt n waits base * 2**(n-1); with the most, half of it."""
    assert backoff_delay(attempt, 2.0, 600.0, rng=Extremes(high=True)) == ceiling
    assert backoff_delay(attempt, 2.0, 600.0, rng=Extremes(high=False)) == ceiling / 2


def test_the_delay_is_capped_at_the_maximum() -> None:
    """After enough attempts the delay stops growing."""
    assert backoff_delay(20, 2.0, 600.0, rng=Extremes(high=True)) == 600.0
    assert backoff_delay(10_000, 2.0, 600.0, rng=Extremes(high=True)) == 600.0


def test_attempt_zero_or_less_waits_like_the_first() -> None:
    """A miscounted attempt never produces a fractional exponent or a negative delay."""
    assert backoff_delay(0, 2.0, 600.0, rng=Extremes(high=True)) == 2.0
    assert backoff_delay(-3, 2.0, 600.0, rng=Extremes(high=True)) == 2.0


def test_jitter_stays_between_half_and_all_of_the_ceiling() -> None:
    """Equal jitter: never bunched at zero, never above the doubling ceiling."""
    rng = random.Random(1234)
    for attempt in range(1, 15):
        ceiling = min(600.0, 2.0 * 2 ** (attempt - 1))
        for _ in range(50):
            delay = backoff_delay(attempt, 2.0, 600.0, rng=rng)
            assert ceiling / 2 <= delay <= ceiling


def test_jitter_spreads_files_that_failed_together() -> None:
    """Many files failing at once do not all retry at the same instant."""
    rng = random.Random(42)
    delays = {round(backoff_delay(5, 2.0, 600.0, rng=rng), 6) for _ in range(20)}
    assert len(delays) > 15


def test_a_seeded_generator_gives_repeatable_delays() -> None:
    """Tests (and reproductions) can pin the jitter."""
    first = [backoff_delay(n, 1.0, 60.0, rng=random.Random(7)) for n in range(1, 6)]
    second = [backoff_delay(n, 1.0, 60.0, rng=random.Random(7)) for n in range(1, 6)]
    assert first == second


def test_retry_after_is_a_floor() -> None:
    """A server asking for 120 s gets at least 120 s, even early in the backoff."""
    assert backoff_delay(1, 2.0, 600.0, retry_after=120.0, rng=Extremes(high=True)) == 120.0


def test_a_short_retry_after_does_not_shorten_the_backoff() -> None:
    """Retry-After: 1 does not undercut our own doubling."""
    assert backoff_delay(6, 2.0, 600.0, retry_after=1.0, rng=Extremes(high=False)) == 32.0


def test_retry_after_may_exceed_the_maximum_backoff_but_not_a_day() -> None:
    """The server's wish wins over max_backoff, up to a day; a week-long header is capped."""
    assert backoff_delay(1, 2.0, 600.0, retry_after=3600.0, rng=Extremes(high=False)) == 3600.0
    assert backoff_delay(1, 2.0, 600.0, retry_after=7 * 86400.0, rng=Extremes(high=False)) == MAX_RETRY_AFTER
    assert MAX_RETRY_AFTER == 86400.0


def test_without_a_generator_the_delay_is_still_in_range() -> None:
    """The default generator is used when none is given."""
    delay = backoff_delay(3, 2.0, 600.0)
    assert 4.0 <= delay <= 8.0
