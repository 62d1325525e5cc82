"""The schedule: one entry per path, handed out in discovery order, on timers, held as a whole."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from tests.unit.pooling import DEADLINE, loop_time
from uploader_daemon.pool.schedule import Schedule, ScheduleClosedError


def run(scenario: Callable[[Schedule], Awaitable[None]]) -> None:
    async def main() -> None:
        await asyncio.wait_for(scenario(Schedule()), DEADLINE)

    asyncio.run(main())


async def take_all(schedule: Schedule, count: int) -> list[tuple[str, int]]:
    return [await schedule.take() for _ in range(count)]


def test_files_go_out_in_the_order_of_their_journal_rows_not_of_their_queueing() -> None:
    """The queue is ordered by record id: the file discovered first goes first."""

    async def scenario(schedule: Schedule) -> None:
        for path, record_id in (("b.csv", 2), ("c.csv", 3), ("a.csv", 1)):
            assert schedule.put(path, record_id)
        assert [("a.csv", 1), ("b.csv", 2), ("c.csv", 3)] == await take_all(schedule, 3)

    run(scenario)


def test_a_path_already_scheduled_is_not_queued_twice() -> None:
    """put() of a scheduled path changes nothing and says so."""

    async def scenario(schedule: Schedule) -> None:
        assert schedule.put("a.csv", 1)
        assert not schedule.put("a.csv", 5)
        schedule.put("z.csv", 9)
        # Had the second put queued anything, ("a.csv", 5) would come before z.
        assert [("a.csv", 1), ("z.csv", 9)] == await take_all(schedule, 2)
        assert (2, 2) == schedule.counts()
        assert 1 == schedule.record_of("a.csv")
        assert schedule.record_of("missing.csv") is None

    run(scenario)


def test_a_file_put_off_with_later_is_handed_out_once_its_delay_is_over() -> None:
    """later() waits its delay on a timer; the entry counts as scheduled meanwhile, not in flight."""

    async def scenario(schedule: Schedule) -> None:
        started = loop_time()
        schedule.later("a.csv", 1, 0.05)
        assert (1, 0) == schedule.counts()
        assert schedule.is_scheduled("a.csv")
        assert ("a.csv", 1) == await schedule.take()
        assert 0.05 <= loop_time() - started + 0.002  # the loop clock's granularity
        assert (1, 1) == schedule.counts()

    run(scenario)


def test_a_file_in_flight_put_off_again_goes_out_again() -> None:
    """A retry: the running entry waits on a new timer and is handed out once more."""

    async def scenario(schedule: Schedule) -> None:
        schedule.put("a.csv", 1)
        await schedule.take()
        schedule.later("a.csv", 1, 0.01)
        assert ("a.csv", 1) == await schedule.take()

    run(scenario)


def test_done_cancels_the_timer_of_a_waiting_file() -> None:
    """A file marked done while it waits is never handed out."""

    async def scenario(schedule: Schedule) -> None:
        schedule.later("a.csv", 1, 0.01)
        schedule.done("a.csv")
        schedule.later("b.csv", 2, 0.05)  # fires after a's timer would have
        assert ("b.csv", 2) == await schedule.take()
        assert not schedule.is_scheduled("a.csv")
        schedule.done("never-scheduled.csv")  # harmless

    run(scenario)


def test_done_drops_a_queued_file() -> None:
    """Its stale queue slot is skipped by take()."""

    async def scenario(schedule: Schedule) -> None:
        schedule.put("a.csv", 1)
        schedule.put("b.csv", 2)
        schedule.done("a.csv")
        assert ("b.csv", 2) == await schedule.take()

    run(scenario)


def test_a_later_for_another_journal_row_replaces_the_entry() -> None:
    """A new version of the path (a new row) supersedes the old row's queue slot."""

    async def scenario(schedule: Schedule) -> None:
        schedule.put("a.csv", 1)
        schedule.later("a.csv", 2, 0.01)
        assert ("a.csv", 2) == await schedule.take()
        assert (1, 1) == schedule.counts()

    run(scenario)


def test_a_hold_hands_out_nothing_until_it_ends_then_one_probe() -> None:
    """take() waits out the hold; then exactly one file goes, the rest wait for the verdict."""

    async def scenario(schedule: Schedule) -> None:
        started = loop_time()
        schedule.hold(started + 0.1)
        schedule.put("a.csv", 1)
        schedule.put("b.csv", 2)
        assert schedule.held
        assert ("a.csv", 1) == await schedule.take()
        assert loop_time() >= started + 0.1 - 0.002
        second = asyncio.create_task(schedule.take())
        for _ in range(10):
            await asyncio.sleep(0)
        assert not second.done()  # the probe's verdict is not in yet
        schedule.resume()
        assert ("b.csv", 2) == await asyncio.wait_for(second, 1)
        assert not schedule.held

    run(scenario)


def test_a_failed_probe_sets_the_next_hold_and_one_more_probe_goes_after_it() -> None:
    """hold() again after the probe: the next file goes once that hold ends."""

    async def scenario(schedule: Schedule) -> None:
        schedule.hold(loop_time())
        schedule.put("a.csv", 1)
        schedule.put("b.csv", 2)
        assert ("a.csv", 1) == await schedule.take()
        again = loop_time()
        schedule.hold(again + 0.05)
        assert ("b.csv", 2) == await asyncio.wait_for(schedule.take(), 1)
        assert loop_time() >= again + 0.05 - 0.002

    run(scenario)


def test_resume_wakes_a_taker_that_waits_out_a_long_hold() -> None:
    """resume() lifts the hold at once."""

    async def scenario(schedule: Schedule) -> None:
        schedule.hold(loop_time() + 60)
        schedule.put("a.csv", 1)
        taker = asyncio.create_task(schedule.take())
        await asyncio.sleep(0)  # let it start waiting
        assert not taker.done()
        schedule.resume()
        assert ("a.csv", 1) == await asyncio.wait_for(taker, 1)
        assert not schedule.held

    run(scenario)


def test_a_closed_schedule_hands_out_nothing_and_takes_nothing_new() -> None:
    """close(): take() raises, put() and later() are refused, timers are cancelled."""

    async def scenario(schedule: Schedule) -> None:
        schedule.put("a.csv", 1)
        schedule.later("b.csv", 2, 0.01)
        schedule.close()
        assert not schedule.put("c.csv", 3)
        schedule.later("d.csv", 4, 0.0)
        assert not schedule.is_scheduled("d.csv")
        with pytest.raises(ScheduleClosedError):
            await schedule.take()

    run(scenario)


def test_close_wakes_a_taker_waiting_out_a_hold() -> None:
    """A held taker learns of the close at once instead of at the hold's end."""

    async def scenario(schedule: Schedule) -> None:
        schedule.hold(loop_time() + 60)
        taker = asyncio.create_task(schedule.take())
        await asyncio.sleep(0)
        schedule.close()
        with pytest.raises(ScheduleClosedError):
            await asyncio.wait_for(taker, 1)

    run(scenario)


def test_a_file_waiting_only_for_its_filing_does_not_count_as_needing_the_api() -> None:
    """files_waiting() (which keeps the token renewed) ignores filing retries."""

    async def scenario(schedule: Schedule) -> None:
        assert not schedule.files_waiting()
        schedule.later("a.csv", 1, 60, filing=True)
        schedule.later("a.csv", 1, 60, filing=True)
        assert not schedule.files_waiting()
        assert 2 == schedule.filing_failures("a.csv")
        assert 0 == schedule.filing_failures("b.csv")
        schedule.put("b.csv", 2)
        assert schedule.files_waiting()
        schedule.done("b.csv")
        assert not schedule.files_waiting()

    run(scenario)


def test_a_taker_already_waiting_when_the_hold_begins_is_held_back_too() -> None:
    """An idle worker must not get a file during a hold (the login backoff) either."""

    async def scenario(schedule: Schedule) -> None:
        taker = asyncio.create_task(schedule.take())
        await asyncio.sleep(0)  # the idle worker waits on the empty queue
        schedule.hold(loop_time() + 60)
        schedule.put("a.csv", 1)
        for _ in range(10):  # let the loop run the taker as far as it can go
            await asyncio.sleep(0)
        handed_out = taker.done()
        taker.cancel()
        assert not handed_out

    run(scenario)
