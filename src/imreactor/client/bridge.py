"""The loop bridge: an :class:`~imreactor.net.EventLoop` on a private thread, called into
from blocking code.

A :class:`LoopBridge` starts its loop on a daemon thread of its own at construction
and owns it until :meth:`LoopBridge.stop`. Other threads hand work to the loop with
:meth:`~LoopBridge.call_soon` (the loop's one cross-thread entry point) and block on
a :class:`concurrent.futures.Future` that the loop side completes with
:func:`resolve` / :func:`fail` (either of which may lose a race to the other, or
to :meth:`~LoopBridge.close_waits`, harmlessly).

Threads: :meth:`~LoopBridge.call_soon`, :meth:`~LoopBridge.close_waits`,
:meth:`~LoopBridge.stop` and :attr:`~LoopBridge.closing` are safe from any thread,
the loop thread included. :meth:`~LoopBridge.wait`, :meth:`~LoopBridge.call` and
:meth:`~LoopBridge.answer` block, so they are for any thread *but* the loop thread
(there the future could only complete after the wait had timed out).

Errors of a wait: :class:`ClientError` once :meth:`~LoopBridge.close_waits` ran
(also for waits under way then, which fail at once), whatever the loop side failed
the future with, and ``TimeoutError`` when the future is not complete within the
wait's timeout, which means a loop thread that did not run the work, not a slow
server (requests carry their own, shorter timeout and fail with ``ClientError``).
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from ..net import EventLoop
from ..pdu.imconn import ResponseCallback
from .errors import ClientError

T = TypeVar("T")

#: How long :meth:`LoopBridge.stop` waits for the loop thread to end.
STOP_JOIN_S = 5.0


def resolve(fut: concurrent.futures.Future[T], result: T) -> None:
    """Complete ``fut`` with ``result`` unless it is already (a close and an answer may race)."""
    try:
        fut.set_result(result)
    except concurrent.futures.InvalidStateError:
        pass  # completed first by the other side


def fail(fut: concurrent.futures.Future[Any], exc: BaseException) -> None:
    """Fail ``fut`` with ``exc`` unless it is already complete."""
    try:
        fut.set_exception(exc)
    except concurrent.futures.InvalidStateError:
        pass  # completed first by the other side


class LoopBridge:
    """One event loop on a private daemon thread, and blocking waits on its work."""

    def __init__(self, thread_name: str = "imreactor-client") -> None:
        #: The loop; touch it only on the loop thread (or through :meth:`call_soon`).
        self.loop = EventLoop()
        self._lock = threading.Lock()  # guards _closing and _inflight
        self._closing = False
        self._inflight: set[concurrent.futures.Future[Any]] = set()
        self._thread = threading.Thread(target=self.loop.run, name=thread_name, daemon=True)
        self._thread.start()

    @property
    def closing(self) -> bool:
        """:meth:`close_waits` has run: every wait fails from now on."""
        return self._closing

    def call_soon(self, fn: Callable[[], Any]) -> None:
        """Run ``fn()`` on the loop thread soon. Any thread."""
        self.loop.call_soon_threadsafe(fn)

    def wait(self, fut: concurrent.futures.Future[T], timeout_s: float) -> T:
        """Wait for ``fut``; :meth:`close_waits` fails every such wait at once."""
        with self._lock:
            if self._closing:
                raise ClientError("client closed")
            self._inflight.add(fut)
        try:
            return fut.result(timeout_s)
        finally:
            with self._lock:
                self._inflight.discard(fut)

    def call(self, fn: Callable[[], T], timeout_s: float) -> T:
        """Run ``fn()`` on the loop thread and wait for what it returns (or raises)."""
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                resolve(fut, fn())
            except BaseException as exc:
                fail(fut, exc)

        self.call_soon(run)
        return self.wait(fut, timeout_s)

    def answer(self, start: Callable[[ResponseCallback], None], timeout_s: float) -> Any:
        """Run ``start(done)`` on the loop thread; wait for its ``done(answer, exc)``.

        ``start`` begins something (a request) that calls ``done`` once. ``done``
        with an exception, or ``start`` raising, raises :class:`ClientError` with
        that exception's text; a ``done`` that does not come within ``timeout_s``
        plus one second raises ``TimeoutError`` (see the module docstring).
        """
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def done(msg: Any, exc: BaseException | None) -> None:
            if exc is not None:
                fail(fut, ClientError(str(exc)))
            else:
                resolve(fut, msg)

        def run() -> None:
            try:
                start(done)
            except Exception as exc:
                done(None, exc)

        self.call_soon(run)
        return self.wait(fut, timeout_s + 1)

    def close_waits(self) -> bool:
        """Fail every wait under way and all later ones; False if that was done before."""
        with self._lock:
            already = self._closing
            self._closing = True
            inflight, self._inflight = self._inflight, set()
        for fut in inflight:
            fail(fut, ClientError("client closed"))
        return not already

    def stop(self, last: Callable[[], Any]) -> None:
        """Run ``last()`` on the loop thread, stop the loop and close it once its thread ended.

        Waits up to :data:`STOP_JOIN_S` for the thread (not when called on it: the
        loop then stops after the current callback, and stays open). Does nothing
        once the thread has ended.
        """
        if not self._thread.is_alive():
            return

        def shutdown() -> None:
            last()
            self.loop.stop()

        self.call_soon(shutdown)
        if threading.current_thread() is not self._thread:
            self._thread.join(STOP_JOIN_S)
        if not self._thread.is_alive():
            self.loop.close()
