"""Timers on a fake clock, on every backend: deadline order, FIFO for equal deadlines, no
early firing, lazy O(1) cancellation with 20,000 pending timers, call_every that neither
drifts nor bursts after a stall, and timers rescheduled while others are cancelled."""

from __future__ import annotations

import random
import time

import pytest

from imreactor.net import EventLoop, Timer
from imreactor.net.testing import FakeClock

pytestmark = pytest.mark.timeout(30)


def test_timers_fire_in_deadline_order(fake_loop: EventLoop, clock: FakeClock) -> None:
    rng = random.Random(1234)
    start = clock.now
    fired: list[tuple[float, int]] = []
    fired_at: list[float] = []
    expected: list[tuple[float, int]] = []

    def fire(when: float, i: int) -> None:
        fired.append((when, i))
        fired_at.append(clock.now)

    for i in range(300):
        # Whole tenths, so that many timers share a deadline (FIFO among them).
        delay = rng.randrange(0, 50) / 10
        expected.append((start + delay, i))
        fake_loop.call_later(delay, fire, start + delay, i)
    assert fake_loop.pending_timers == 300
    while clock.now < start + 6:
        fake_loop.run_once(0)
        clock.advance(rng.choice([0.05, 0.1, 0.25, 0.3]))
    fake_loop.run_once(0)
    assert fired == sorted(expected)
    assert all(at >= when for (when, _), at in zip(fired, fired_at, strict=True)), "fired early"
    assert fake_loop.pending_timers == 0


def test_a_timer_does_not_fire_before_its_deadline(fake_loop: EventLoop, clock: FakeClock) -> None:
    fired: list[float] = []
    fake_loop.call_later(10.0, lambda: fired.append(clock.now))
    fake_loop.call_at(clock.now + 20.0, lambda: fired.append(clock.now))
    clock.advance(9.999)
    fake_loop.run_once(0)
    assert fired == []
    clock.advance(0.001)
    fake_loop.run_once(0)
    assert len(fired) == 1
    clock.advance(10.0)
    fake_loop.run_once(0)
    assert len(fired) == 2


def test_cancel_is_lazy_and_cheap_with_20000_timers(fake_loop: EventLoop, clock: FakeClock) -> None:
    fired: list[int] = []
    timers: list[Timer] = [
        fake_loop.call_later(60.0 + i * 0.001, fired.append, i) for i in range(20_000)
    ]
    assert fake_loop.pending_timers == 20_000

    # Lazy: a cancelled timer stays in the heap, only counted out.
    timers[10_000].cancel()
    assert len(fake_loop._timers._heap) == 20_000
    assert fake_loop.pending_timers == 19_999

    start = time.perf_counter()
    for timer in timers[:-1]:
        timer.cancel()
        timer.cancel()  # idempotent
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0, f"cancelling 20,000 timers took {elapsed:.2f} s"
    assert fake_loop.pending_timers == 1
    # The heap is compacted as cancellations pile up: never mostly dead entries.
    assert len(fake_loop._timers._heap) <= 2 * fake_loop.pending_timers + 100

    clock.advance(120.0)
    fake_loop.run_once(0)
    assert fired == [19_999]
    assert fake_loop.pending_timers == 0


def test_cancelled_and_fired_timers_never_run_again(fake_loop: EventLoop, clock: FakeClock) -> None:
    fired: list[str] = []
    once = fake_loop.call_later(1.0, fired.append, "once")
    never = fake_loop.call_later(1.0, fired.append, "never")
    never.cancel()
    clock.advance(1.0)
    fake_loop.run_once(0)
    once.cancel()  # after firing: a no-op, and the live count stays right
    assert fake_loop.pending_timers == 0
    clock.advance(5.0)
    fake_loop.run_once(0)
    assert fired == ["once"]


def test_a_timer_cancelled_by_an_earlier_timer_of_the_same_batch_does_not_run(
    fake_loop: EventLoop, clock: FakeClock
) -> None:
    fired: list[str] = []
    second = fake_loop.call_later(1.0, fired.append, "second")
    fake_loop.call_at(clock.now + 0.5, second.cancel)
    clock.advance(2.0)
    fake_loop.run_once(0)
    assert fired == []


def test_call_every_does_not_drift(fake_loop: EventLoop, clock: FakeClock) -> None:
    start = clock.now
    ticks: list[float] = []
    timer = fake_loop.call_every(1.0, lambda: ticks.append(clock.now))
    # The loop wakes 0.3 s late for every tick: the schedule must not absorb the lateness.
    for _ in range(34):
        clock.advance(0.3)
        fake_loop.run_once(0)
    assert clock.now == pytest.approx(start + 10.2)
    assert len(ticks) == 10, "one tick per second of clock, whatever the loop's lateness"
    assert timer.when == pytest.approx(start + 11.0)


def test_call_every_skips_missed_ticks_and_keeps_its_phase(
    fake_loop: EventLoop, clock: FakeClock
) -> None:
    start = clock.now
    ticks: list[float] = []
    timer = fake_loop.call_every(1.0, lambda: ticks.append(clock.now))
    clock.advance(3.5)  # the loop stalled over three deadlines
    fake_loop.run_once(0)
    fake_loop.run_once(0)
    assert len(ticks) == 1, "missed ticks are skipped, not run in a burst"
    # The next tick is the next one of the original schedule: 4 s after the start.
    assert timer.when == pytest.approx(start + 4.0)
    clock.advance(0.5)
    fake_loop.run_once(0)
    assert len(ticks) == 2


def test_call_every_first_delay_and_cancel_from_inside(
    fake_loop: EventLoop, clock: FakeClock
) -> None:
    ticks: list[float] = []

    def tick() -> None:
        ticks.append(clock.now)
        if len(ticks) == 3:
            timer.cancel()

    timer = fake_loop.call_every(2.0, tick, first_s=0.5)
    for _ in range(20):
        clock.advance(0.5)
        fake_loop.run_once(0)
    assert [t - ticks[0] for t in ticks] == pytest.approx([0.0, 2.0, 4.0])
    assert fake_loop.pending_timers == 0
    with pytest.raises(ValueError):
        fake_loop.call_every(0, tick)


def test_a_zero_delay_timer_scheduled_by_a_timer_waits_for_the_next_iteration(
    fake_loop: EventLoop, clock: FakeClock
) -> None:
    runs: list[int] = []

    def again() -> None:
        runs.append(1)
        fake_loop.call_later(0, again)

    fake_loop.call_later(0, again)
    for expected in range(1, 6):
        fake_loop.run_once(0)
        assert len(runs) == expected, "a self-rescheduling timer must not starve the loop"


def test_repeating_timer_survives_a_compaction_in_the_same_batch(
    fake_loop: EventLoop, clock: FakeClock
) -> None:
    # A timer that cancels many others (a sweep closing idle connections, each with
    # its own timer) makes the heap compact itself; a repeating timer due in the same
    # batch must still be rescheduled into the live heap.
    idle = [fake_loop.call_later(100.0, lambda: None) for _ in range(300)]

    def sweep() -> None:
        for timer in idle:
            timer.cancel()

    ticks: list[float] = []
    fake_loop.call_later(1.0, sweep)
    fake_loop.call_every(1.0, lambda: ticks.append(clock.now))
    for _ in range(3):
        clock.advance(1.0)
        fake_loop.run_once(0)
    assert len(ticks) == 3
    assert fake_loop.pending_timers == 1


def test_the_loop_uses_its_clock(fake_loop: EventLoop, clock: FakeClock) -> None:
    assert fake_loop.time() == clock.now
    clock.advance(2.5)
    assert fake_loop.time() == clock.now
    with pytest.raises(ValueError):
        clock.advance(-1)
