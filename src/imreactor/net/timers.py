"""Timers in a binary heap with lazy cancellation.

``cancel()`` only marks a timer; the heap drops it when it reaches the top, and
is rebuilt when more than half of it is cancelled, so cancelling is O(1) and
the heap never holds more dead entries than live ones (plus a small constant).
Many thousands of pending timers (one idle-timeout per connection) cost
O(log n) per schedule and nothing per loop iteration.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

# Below this many cancelled entries the heap is never compacted: rebuilding
# a small heap costs more than popping a few dead entries.
_COMPACT_MIN = 64


class Timer:
    """A scheduled call. Returned by :meth:`TimerQueue.call_at`; only ``cancel()`` is public.

    A repeating timer (``interval_s`` > 0) is rescheduled after each call from its
    previous deadline, so it does not drift; if the loop fell behind by more than
    one interval, the missed calls are skipped rather than run in a burst, and the
    next call is the next one of the original schedule.
    """

    __slots__ = ("_in_heap", "_queue", "args", "callback", "cancelled", "interval_s", "when")

    def __init__(
        self,
        queue: TimerQueue,
        when: float,
        callback: Callable[..., Any],
        args: tuple[Any, ...],
        interval_s: float,
    ) -> None:
        self._queue = queue
        self.when = when
        self.callback = callback
        self.args = args
        self.interval_s = interval_s
        self.cancelled = False
        self._in_heap = True

    def cancel(self) -> None:
        """Stop the timer. Idempotent; safe to call from inside its own callback."""
        if not self.cancelled:
            self.cancelled = True
            if self._in_heap:
                self._queue._cancelled_one()

    def __repr__(self) -> str:
        state = "cancelled" if self.cancelled else f"when={self.when:.3f}"
        return f"<Timer {getattr(self.callback, '__qualname__', self.callback)} {state}>"


class TimerQueue:
    """The timer heap of one event loop. Not thread-safe: loop thread only."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._cancelled = 0

    def __len__(self) -> int:
        """Number of live (not cancelled) timers."""
        return len(self._heap) - self._cancelled

    def call_at(
        self,
        when: float,
        callback: Callable[..., Any],
        args: tuple[Any, ...] = (),
        interval_s: float = 0.0,
    ) -> Timer:
        """Schedule ``callback(*args)`` at time ``when``; repeat every ``interval_s`` if > 0."""
        if interval_s < 0:
            raise ValueError("interval_s must be >= 0")
        timer = Timer(self, when, callback, args, interval_s)
        # The sequence number keeps timers with equal deadlines in FIFO order and
        # means Timer objects are never compared.
        heapq.heappush(self._heap, (when, next(self._seq), timer))
        return timer

    def next_deadline(self) -> float | None:
        """Deadline of the earliest live timer, or ``None``."""
        heap = self._heap
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
            self._cancelled -= 1
        return heap[0][0] if heap else None

    def run_due(self, now: float) -> int:
        """Run every timer due at ``now``; returns how many ran.

        A callback that raises is logged and, if repeating, stays scheduled.
        Timers scheduled by a callback for a time <= ``now`` run in the next
        call, not this one, so a timer that reschedules itself at 0 delay
        cannot starve I/O.
        """
        heap = self._heap
        ran = 0
        due: list[Timer] = []
        while heap and heap[0][0] <= now:
            timer = heapq.heappop(heap)[2]
            if timer.cancelled:
                self._cancelled -= 1
                continue
            timer._in_heap = False
            due.append(timer)
        for timer in due:
            if timer.cancelled:  # cancelled by an earlier callback in this batch
                continue
            if timer.interval_s > 0:
                interval = timer.interval_s
                when = timer.when + interval
                if when <= now:
                    # Missed ticks are skipped; the next one stays on the schedule.
                    when += ((now - when) // interval + 1) * interval
                timer.when = when
                timer._in_heap = True
                # self._heap, not the local: a callback earlier in this batch may
                # have cancelled enough timers to compact the heap into a new list.
                heapq.heappush(self._heap, (when, next(self._seq), timer))
            else:
                timer.cancelled = True  # fired: a later cancel() is a no-op
            ran += 1
            try:
                timer.callback(*timer.args)
            except Exception:
                log.exception("timer callback %r failed", timer.callback)
        return ran

    def _cancelled_one(self) -> None:
        self._cancelled += 1
        if self._cancelled > _COMPACT_MIN and self._cancelled * 2 > len(self._heap):
            self._heap = [entry for entry in self._heap if not entry[2].cancelled]
            heapq.heapify(self._heap)
            self._cancelled = 0

    def clear(self) -> None:
        for _, _, timer in self._heap:
            timer.cancelled = True
            timer._in_heap = False
        self._heap.clear()
        self._cancelled = 0
