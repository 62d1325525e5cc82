"""The shared journal's view of its database: one change per outage, by statements sent since."""

from __future__ import annotations

from uploader_daemon.journal.reachability import Reachability


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_first_failure_starts_an_outage_and_a_later_answer_ends_it() -> None:
    clock = Clock()
    reachability = Reachability(clock)
    assert reachability.down_for is None

    assert reachability.failed(reachability.sent_at())
    assert not reachability.failed(reachability.sent_at())  # already down: no second start
    clock.now += 4.0
    assert 4.0 == reachability.down_for
    assert 4.0 == reachability.answered(reachability.sent_at())
    assert reachability.down_for is None
    assert reachability.answered(reachability.sent_at()) is None  # already up: no second end


def test_an_answer_to_a_statement_sent_before_the_outage_does_not_end_it() -> None:
    clock = Clock()
    reachability = Reachability(clock)
    early = reachability.sent_at()
    clock.now += 0.001
    assert reachability.failed(reachability.sent_at())
    clock.now += 0.001

    assert reachability.answered(early) is None
    assert reachability.down_for is not None
    assert reachability.answered(reachability.sent_at()) is not None


def test_a_failure_of_a_statement_sent_before_the_recovery_does_not_start_another_outage() -> None:
    clock = Clock()
    reachability = Reachability(clock)
    assert reachability.failed(reachability.sent_at())
    clock.now += 1.0
    stuck = reachability.sent_at()  # waited in the pool through the recovery
    clock.now += 1.0
    assert reachability.answered(reachability.sent_at()) is not None
    clock.now += 1.0

    assert not reachability.failed(stuck)
    assert reachability.down_for is None
    assert reachability.failed(reachability.sent_at())
