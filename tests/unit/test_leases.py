"""This node's own view of its leases (``journal/leases.py``), on a fake monotonic clock.

No database and no event loop: :class:`Leases` only compares deadlines with the clock it
is given, and hands out ``asyncio.Event`` objects that the tests read with ``is_set()``.
"""

from __future__ import annotations

from dataclasses import dataclass

from uploader_daemon.journal.leases import Leases

LEASE = 10.0
T0 = 1_000.0


@dataclass
class FakeMonotonic:
    """A monotonic clock that moves only when a test moves it."""

    now: float = T0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def leases_at(clock: FakeMonotonic) -> Leases:
    return Leases(LEASE, clock)


def test_sent_at_is_the_clocks_reading_now() -> None:
    """The time noted before a claim is sent is the injected clock's, not the real one."""
    clock = FakeMonotonic()
    leases = leases_at(clock)
    clock.advance(3.5)

    assert T0 + 3.5 == leases.sent_at()


def test_a_held_claim_is_alive_until_its_sent_time_plus_the_lease() -> None:
    """The local deadline runs from when the claim was sent, not from when the answer came."""
    clock = FakeMonotonic()
    leases = leases_at(clock)
    leases.hold(1, fence=3, sent_at=T0)

    clock.advance(LEASE - 0.001)
    alive_just_before = leases.alive(1, 3)
    clock.advance(0.001)
    alive_at_deadline = leases.alive(1, 3)

    assert (True, False) == (alive_just_before, alive_at_deadline)


def test_the_deadline_counts_from_sent_at_even_when_the_answer_came_later() -> None:
    """A claim answered 4 s after it was sent has only lease - 4 s left."""
    clock = FakeMonotonic()
    leases = leases_at(clock)
    sent_at = leases.sent_at()
    clock.advance(4.0)
    leases.hold(1, fence=1, sent_at=sent_at)

    clock.advance(LEASE - 4.0)

    assert False is leases.alive(1, 1)


def test_alive_with_a_margin_needs_more_than_the_margin_left() -> None:
    """A claim with less than ``margin`` seconds left is not alive for a move that needs them."""
    clock = FakeMonotonic()
    leases = leases_at(clock)
    leases.hold(1, fence=1, sent_at=T0)

    clock.advance(LEASE - 2.0)

    assert (True, False, False) == (
        leases.alive(1, 1, margin=1.0),
        leases.alive(1, 1, margin=2.0),
        leases.alive(1, 1, margin=3.0),
    )


def test_alive_is_false_for_another_fence_or_an_unknown_claim() -> None:
    """Only the very claim (record and fence) this node holds is alive."""
    leases = leases_at(FakeMonotonic())
    leases.hold(1, fence=2, sent_at=T0)

    assert (True, False, False) == (leases.alive(1, 2), leases.alive(1, 1), leases.alive(99, 2))


def test_holding_a_record_again_replaces_its_fence_and_deadline() -> None:
    """A new claim of the same row (a higher fence) is the one held from then on."""
    clock = FakeMonotonic()
    leases = leases_at(clock)
    leases.hold(1, fence=1, sent_at=T0)
    clock.advance(5.0)
    leases.hold(1, fence=2, sent_at=clock.now)

    clock.advance(LEASE - 1.0)

    assert ({1: 2}, False, True) == (leases.fences(), leases.alive(1, 1), leases.alive(1, 2))


def test_a_renewal_extends_the_deadline_from_when_it_was_sent() -> None:
    """After a renewal sent at t, the claim is alive until t + lease."""
    clock = FakeMonotonic()
    leases = leases_at(clock)
    leases.hold(1, fence=1, sent_at=T0)
    clock.advance(6.0)
    leases.renewed([(1, 1)], sent_at=clock.now)

    clock.advance(LEASE - 0.5)
    alive_before = leases.alive(1, 1)
    clock.advance(0.5)

    assert (True, False, T0 + 6.0 + LEASE) == (alive_before, leases.alive(1, 1), leases.next_deadline())


def test_a_renewal_for_another_fence_extends_nothing() -> None:
    """A renewal that matched an older claim of the row does not keep the current one alive longer."""
    clock = FakeMonotonic()
    leases = leases_at(clock)
    leases.hold(1, fence=2, sent_at=T0)
    clock.advance(6.0)

    leases.renewed([(1, 1), (99, 2)], sent_at=clock.now)

    assert (T0 + LEASE, [1]) == (leases.next_deadline(), leases.held())


def test_a_renewal_never_shortens_a_deadline() -> None:
    """A late answer to an old renewal (sent before the last claim) leaves the later deadline."""
    clock = FakeMonotonic()
    leases = leases_at(clock)
    old_sent_at = leases.sent_at()
    clock.advance(3.0)
    leases.hold(1, fence=1, sent_at=clock.now)

    leases.renewed([(1, 1)], sent_at=old_sent_at)

    assert T0 + 3.0 + LEASE == leases.next_deadline()


def test_a_renewal_does_not_revive_a_lost_claim() -> None:
    """Once lost, a claim stays lost whatever a renewal in flight says."""
    leases = leases_at(FakeMonotonic())
    leases.hold(1, fence=1, sent_at=T0)
    watch = leases.watch(1, 1)
    leases.lose(1, 1)

    leases.renewed([(1, 1)], sent_at=T0 + 5.0)

    assert (True, False, []) == (watch.is_set(), leases.alive(1, 1), leases.held())


def test_the_watch_of_a_held_claim_is_set_when_it_is_lost() -> None:
    """The worker's event is not set while the claim is held, and set the moment it is lost."""
    leases = leases_at(FakeMonotonic())
    leases.hold(1, fence=4, sent_at=T0)
    watch = leases.watch(1, 4)
    set_while_held = watch.is_set()

    leases.lose(1, 4)

    assert (False, True, False, []) == (set_while_held, watch.is_set(), leases.alive(1, 4), leases.held())


def test_the_watch_of_a_claim_is_the_same_event_each_time() -> None:
    """Two watchers of one claim are told together."""
    leases = leases_at(FakeMonotonic())
    leases.hold(1, fence=1, sent_at=T0)

    assert leases.watch(1, 1) is leases.watch(1, 1)


def test_the_watch_of_an_unknown_or_other_fence_claim_is_already_set() -> None:
    """A claim this node does not hold (any more) is reported lost at once."""
    leases = leases_at(FakeMonotonic())
    leases.hold(1, fence=2, sent_at=T0)

    unknown = leases.watch(99, 1)
    older_fence = leases.watch(1, 1)

    assert (True, True, False) == (unknown.is_set(), older_fence.is_set(), leases.watch(1, 2).is_set())


def test_losing_with_a_fence_that_does_not_match_does_nothing() -> None:
    """A takeover reported for an older claim of the row leaves the current claim held."""
    leases = leases_at(FakeMonotonic())
    leases.hold(1, fence=3, sent_at=T0)
    watch = leases.watch(1, 3)

    leases.lose(1, 2)
    leases.lose(99, 3)

    assert (False, True, {1: 3}) == (watch.is_set(), leases.alive(1, 3), leases.fences())


def test_losing_without_a_fence_loses_whatever_claim_is_held() -> None:
    """``lose(record_id)`` with no fence ends the row's claim, whichever fence it has."""
    leases = leases_at(FakeMonotonic())
    leases.hold(1, fence=3, sent_at=T0)
    watch = leases.watch(1, 3)

    leases.lose(1)

    assert (True, 0) == (watch.is_set(), len(leases))


def test_dropping_a_claim_forgets_it_without_telling_the_worker() -> None:
    """A claim ended on purpose (finished, released) is not renewed and its event stays clear."""
    leases = leases_at(FakeMonotonic())
    leases.hold(1, fence=1, sent_at=T0)
    leases.hold(2, fence=1, sent_at=T0)
    watch = leases.watch(1, 1)

    leases.drop(1)
    leases.drop(99)  # an unknown row is no error

    assert (False, False, {2: 1}) == (watch.is_set(), leases.alive(1, 1), leases.fences())


def test_expire_loses_only_the_claims_past_their_deadline() -> None:
    """Claims at or past their local deadline are lost and their workers told; the others stay."""
    clock = FakeMonotonic()
    leases = leases_at(clock)
    leases.hold(1, fence=1, sent_at=T0)
    leases.hold(2, fence=1, sent_at=T0 + 2.0)
    leases.hold(3, fence=1, sent_at=T0 + 5.0)
    watches = {record_id: leases.watch(record_id, 1) for record_id in (1, 2, 3)}

    clock.advance(LEASE + 2.0)  # exactly record 2's deadline
    expired = leases.expire()

    assert [1, 2] == sorted(expired)
    assert {1: True, 2: True, 3: False} == {record_id: event.is_set() for record_id, event in watches.items()}
    assert {3: 1} == leases.fences()


def test_expire_before_any_deadline_loses_nothing() -> None:
    """With every deadline ahead, expire returns nothing and keeps every claim."""
    clock = FakeMonotonic()
    leases = leases_at(clock)
    leases.hold(1, fence=1, sent_at=T0)
    clock.advance(LEASE - 0.1)

    assert ([], [1]) == (leases.expire(), leases.held())


def test_next_deadline_is_the_earliest_deadline_or_none() -> None:
    """The heartbeat wakes for the first claim that would run out; with none held there is none."""
    leases = leases_at(FakeMonotonic())
    empty = leases.next_deadline()
    leases.hold(1, fence=1, sent_at=T0 + 4.0)
    leases.hold(2, fence=1, sent_at=T0 + 1.0)
    leases.hold(3, fence=1, sent_at=T0 + 7.0)

    assert (None, T0 + 1.0 + LEASE) == (empty, leases.next_deadline())


def test_clear_loses_every_claim_and_tells_every_worker() -> None:
    """Giving up all claims (release_claims of this node) sets every watch event."""
    leases = leases_at(FakeMonotonic())
    leases.hold(1, fence=1, sent_at=T0)
    leases.hold(2, fence=5, sent_at=T0)
    watches = [leases.watch(1, 1), leases.watch(2, 5)]

    leases.clear()

    assert ([True, True], 0, None) == (
        [event.is_set() for event in watches],
        len(leases),
        leases.next_deadline(),
    )


def test_fences_held_and_len_describe_the_claims_held() -> None:
    """``fences()`` maps each held row to its fence; ``held()`` and ``len()`` agree with it."""
    leases = leases_at(FakeMonotonic())
    leases.hold(7, fence=1, sent_at=T0)
    leases.hold(3, fence=9, sent_at=T0)

    fences = leases.fences()
    fences[7] = 100  # a copy: changing it changes nothing held

    assert ({7: 1, 3: 9}, [7, 3], 2, True) == (leases.fences(), leases.held(), len(leases), bool(leases))


def test_no_claims_held_is_falsy() -> None:
    """The heartbeat's ``while leases`` stops when nothing is held."""
    leases = leases_at(FakeMonotonic())

    assert (0, False, {}, []) == (len(leases), bool(leases), leases.fences(), leases.held())
