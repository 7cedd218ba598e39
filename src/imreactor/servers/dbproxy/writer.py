"""Group commit: many concurrent message inserts stored in few transactions.

Each worker thread that has a message to store hands it to the one writer
thread and waits. The writer takes everything that is waiting (up to
``max_batch``), stores it in one transaction, and wakes every waiter with its
result. With N requests in flight, a commit (and its fsync) is shared by up to
N messages, so durability stops costing throughput, and no message is reported
stored before its transaction committed.

If a batch fails, its messages are retried one by one, so one bad message
(or a transient error) does not fail the others with it.

Order: each item's ``on_commit`` hook runs on the writer thread, in batch order,
batch after batch. Within a conversation that is ``msg_id`` order, so a caller
that hands results to the event loop from the hook (a FIFO) answers in id
order; results handed over by the waiting threads would arrive in whatever
order those threads happen to wake.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")

_STOP = object()


class GroupCommitWriter(Generic[In, Out]):
    """Runs ``store_batch(items) -> results`` (one transaction) on a dedicated thread.

    ``store_batch`` must be all-or-nothing and return one result per item, in order.
    :meth:`submit` is safe from any thread.
    """

    def __init__(
        self, store_batch: Callable[[Sequence[In]], Sequence[Out]], max_batch: int = 256
    ) -> None:
        self._store_batch = store_batch
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self.batches = 0  #: transactions committed
        self.items = 0  #: items stored
        self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
        self._thread.start()

    def submit(self, item: In, on_commit: Callable[[Out], Any] | None = None) -> Future[Out]:
        """Queue ``item``; the future completes once it is committed (or failed).

        ``on_commit(result)`` runs on the writer thread after the commit, before
        the future completes, in commit order; it is not called if the item failed.
        """
        fut: Future[Out] = Future()
        self._queue.put((item, fut, on_commit))
        return fut

    def store(
        self,
        item: In,
        on_commit: Callable[[Out], Any] | None = None,
        timeout_s: float | None = None,
    ) -> Out:
        """Submit and wait: for worker threads."""
        return self.submit(item, on_commit).result(timeout_s)

    def _run(self) -> None:
        q = self._queue
        while True:
            first = q.get()
            if first is _STOP:
                return
            batch = [first]
            stop = False
            while len(batch) < self.max_batch:
                try:
                    entry = q.get_nowait()
                except queue.Empty:
                    break
                if entry is _STOP:
                    stop = True
                    break
                batch.append(entry)
            self._commit(batch)  # type: ignore[arg-type]
            if stop:
                return

    def _commit(self, batch: list[tuple[In, Future[Out], Callable[[Out], Any] | None]]) -> None:
        items = [item for item, _, _ in batch]
        try:
            results = self._store_batch(items)
        except Exception as exc:
            if len(batch) == 1:
                batch[0][1].set_exception(exc)
                return
            log.warning("batch of %d failed (%r); storing one by one", len(batch), exc)
            for entry in batch:
                self._commit([entry])
            return
        self.batches += 1
        self.items += len(batch)
        for (_, fut, on_commit), result in zip(batch, results, strict=True):
            if on_commit is not None:
                try:
                    on_commit(result)
                except Exception:
                    log.exception("on_commit hook failed")
            fut.set_result(result)

    def close(self) -> None:
        """Store what is queued, then stop the thread."""
        self._queue.put(_STOP)
        self._thread.join()
