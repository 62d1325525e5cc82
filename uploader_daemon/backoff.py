"""Exponential backoff with jitter, shared by file retries and login retries."""

from __future__ import annotations

import random

# Never wait longer than a day, whatever a server's Retry-After says: a daemon that
# sleeps for a week on a typo in a proxy's header is worse than one that asks again.
MAX_RETRY_AFTER = 86400.0


def backoff_delay(
    attempt: int,
    base: float,
    maximum: float,
    *,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 1).

    The delay doubles from ``base`` up to ``maximum``; "equal jitter" keeps at least
    half of it so retries never bunch at zero, and spreads the rest so many files that
    failed together do not retry together. A server's ``Retry-After`` is a floor.
    """
    generator = rng if rng is not None else random.Random()  # noqa: S311 -- jitter, not crypto
    exponent = min(max(attempt - 1, 0), 62)
    ceiling = min(maximum, base * (2.0**exponent))
    delay = ceiling / 2 + generator.uniform(0, ceiling / 2)
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
    return delay
