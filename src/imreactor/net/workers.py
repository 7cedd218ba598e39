"""A worker thread pool whose results come back on the loop thread.

Blocking work (database queries, password hashing) runs on threads; its result
or exception is handed to a callback that runs on the loop thread, through the
loop's one thread-safe entry point. Tasks submitted with the same ``key`` run
on the same thread, in submission order: the original ran the requests of one
connection on random threads, so a client's requests could complete out of
order. The queue is bounded: :meth:`WorkerPool.submit` raises
:class:`PoolFull` instead of letting a flood of requests eat memory.

A task may carry a deadline (on the loop's clock): a task still queued when its
deadline passes is dropped unstarted, and its callback gets
:class:`DeadlineExpired`. Work that nobody waits for any more (a request whose
client already gave up) then costs nothing, and a backlog drains at the speed of
reading the queue instead of the speed of doing the work.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .loop import EventLoop

log = logging.getLogger(__name__)

ResultCallback = Callable[[Any, "BaseException | None"], Any]
_STOP = object()


class PoolFull(RuntimeError):
    """More than ``max_pending`` tasks are queued or running."""


class DeadlineExpired(TimeoutError):
    """A task's deadline passed while it waited in the queue; it never ran."""


class WorkerPool:
    """``threads`` worker threads serving ``loop``. ``submit`` is for the loop thread.

    ``callback(result, exc)`` runs on the loop thread: ``exc`` is None on
    success, else the exception the task raised (``result`` is then None).
    """

    def __init__(
        self,
        loop: EventLoop,
        threads: int = 4,
        *,
        max_pending: int = 10_000,
        name: str = "worker",
    ) -> None:
        if threads < 1:
            raise ValueError("threads must be >= 1")
        self.loop = loop
        self.max_pending = max_pending
        self._queues: list[queue.SimpleQueue[Any]] = [queue.SimpleQueue() for _ in range(threads)]
        self._next = itertools.cycle(range(threads))
        self._pending = 0
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._work, args=(q,), name=f"{name}-{i}", daemon=True)
            for i, q in enumerate(self._queues)
        ]
        self._closed = False
        #: Tasks dropped unstarted because their deadline had passed.
        self.expired = 0
        for thread in self._threads:
            thread.start()

    @property
    def pending(self) -> int:
        """Tasks submitted whose callback has not been scheduled yet."""
        return self._pending

    def submit(
        self,
        fn: Callable[..., Any],
        *args: Any,
        key: Hashable | None = None,
        callback: ResultCallback | None = None,
        deadline: float | None = None,
    ) -> None:
        """Run ``fn(*args)`` on a worker; then ``callback(result, exc)`` on the loop thread.

        Tasks with equal ``key`` run one at a time in submission order; their
        callbacks run in that order too. ``deadline`` is a time on the loop's
        clock (``loop.time()``): if a worker takes the task up after it, ``fn`` is
        not called and ``callback`` gets :class:`DeadlineExpired`; a task that
        has started always runs to its end. Raises :class:`PoolFull` when
        ``max_pending`` tasks are outstanding, and ``RuntimeError`` after
        :meth:`shutdown`.
        """
        if self._closed:
            raise RuntimeError("worker pool is shut down")
        with self._lock:
            if self._pending >= self.max_pending:
                raise PoolFull(f"{self._pending} tasks pending")
            self._pending += 1
        index = next(self._next) if key is None else hash(key) % len(self._queues)
        self._queues[index].put((fn, args, callback, deadline))

    def _work(self, q: queue.SimpleQueue[Any]) -> None:
        call_back = self.loop.call_soon_threadsafe
        clock = self.loop.time
        while True:
            item = q.get()
            if item is _STOP:
                return
            fn, args, callback, deadline = item
            exc: BaseException | None
            if deadline is not None and clock() >= deadline:
                result, exc = None, DeadlineExpired("deadline passed before the task started")
                with self._lock:
                    self.expired += 1
            else:
                try:
                    result, exc = fn(*args), None
                except BaseException as e:  # delivered to the callback, never lost in a thread
                    result, exc = None, e
            with self._lock:
                self._pending -= 1
            if callback is not None:
                call_back(callback, result, exc)
            elif exc is not None and not isinstance(exc, DeadlineExpired):
                log.error("worker task %r failed", fn, exc_info=exc)

    def shutdown(self, wait: bool = True) -> None:
        """Let queued tasks finish, then stop the threads. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for q in self._queues:
            q.put(_STOP)
        if wait:
            for thread in self._threads:
                thread.join()
