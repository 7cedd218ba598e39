"""Group commit: many concurrent message inserts stored in few transactions.

Each worker thread that has a message to store hands it to the one writer
thread and waits. The writer takes everything that is waiting (up to
``max_batch``), stores it in one transaction, and wakes every waiter with its
result. With N requests in flight, a commit (and its fsync) is shared by up to
N messages, so durability stops costing throughput, and no message is reported
stored before its transaction committed.

If a batch fails with an error that one item can cause (``retry_alone``), its
items are retried one by one, so one bad message does not fail the others; any
other error (the database is down) fails the batch's items at once, without
retries that would only fail the same way. Whatever raises, only that batch's
futures fail: the writer thread never dies, so no waiter blocks for good.

A waiter can give up (:meth:`GroupCommitWriter.store` with a timeout, or
cancelling the future): an item whose batch has not started yet is then never
stored; one already in a running transaction is waited for, since only the
transaction can say whether it was stored.

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
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Generic, TypeVar

from ..metrics import Histogram

log = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")

_STOP = object()


class StoreTimeout(TimeoutError):
    """The item waited longer than the caller allowed and was not stored."""


_Entry = tuple[In, "Future[Out]", "Callable[[Out], Any] | None"]


class GroupCommitWriter(Generic[In, Out]):
    """Runs ``store_batch(items) -> results`` (one transaction) on a dedicated thread.

    ``store_batch`` must be all-or-nothing and return one result per item, in order.
    An exception of a type in ``retry_alone`` means one item may be at fault: the
    batch is then retried item by item. :meth:`submit` and :meth:`store` are safe
    from any thread.
    """

    def __init__(
        self,
        store_batch: Callable[[Sequence[In]], Sequence[Out]],
        max_batch: int = 256,
        retry_alone: tuple[type[BaseException], ...] = (),
        batch_sizes: Histogram | None = None,
    ) -> None:
        self._store_batch = store_batch
        #: Observes each committed batch's size, on the writer thread (its only writer).
        self.batch_sizes = batch_sizes
        self.max_batch = max_batch
        self.retry_alone = retry_alone
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self.batches = 0  #: transactions committed
        self.items = 0  #: items stored
        self.failed_batches = 0  #: transactions that raised (items retried alone count too)
        self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
        self._thread.start()

    @property
    def queued(self) -> int:
        """Items waiting for a batch (approximate, as any queue size read elsewhere)."""
        return self._queue.qsize()

    @property
    def alive(self) -> bool:
        """The writer thread runs (false after :meth:`close`, or if it died)."""
        return self._thread.is_alive()

    def submit(self, item: In, on_commit: Callable[[Out], Any] | None = None) -> Future[Out]:
        """Queue ``item``; the future completes once it is committed (or failed).

        ``on_commit(result)`` runs on the writer thread after the commit, before
        the future completes, in commit order; it is not called if the item failed.
        Cancelling the future before its batch starts keeps the item from being stored.
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
        """Submit and wait: for worker threads.

        Raises :class:`StoreTimeout` if ``item``'s batch has not started within
        ``timeout_s`` (it is then never stored); once its transaction runs, waits
        for the transaction's outcome.
        """
        fut = self.submit(item, on_commit)
        try:
            return fut.result(timeout_s)
        except FutureTimeout:
            if fut.cancel():
                raise StoreTimeout(f"not stored: waited {timeout_s} s for the writer") from None
            return fut.result()

    def _run(self) -> None:
        q = self._queue
        while True:
            first = q.get()
            if first is _STOP:
                return
            batch: list[_Entry[In, Out]] = [first]  # type: ignore[list-item]
            stop = False
            while len(batch) < self.max_batch:
                try:
                    entry = q.get_nowait()
                except queue.Empty:
                    break
                if entry is _STOP:
                    stop = True
                    break
                batch.append(entry)  # type: ignore[arg-type]
            # Cancelled items are dropped here, and the rest can no longer be cancelled.
            live = [e for e in batch if e[1].set_running_or_notify_cancel()]
            try:
                self._commit(live)
            except Exception as exc:  # a bug in a batch must not end the thread
                log.exception("group commit of %d items failed unexpectedly", len(live))
                for _, fut, _ in live:
                    if not fut.done():
                        fut.set_exception(exc)
            if stop:
                return

    def _commit(self, batch: list[_Entry[In, Out]]) -> None:
        if not batch:
            return
        items = [item for item, _, _ in batch]
        try:
            results = self._store_batch(items)
        except Exception as exc:
            self.failed_batches += 1
            if len(batch) > 1 and isinstance(exc, self.retry_alone):
                log.warning("batch of %d failed (%r); storing one by one", len(batch), exc)
                for entry in batch:
                    self._commit([entry])
                return
            log.warning("batch of %d failed: %r", len(batch), exc)
            for _, fut, _ in batch:
                fut.set_exception(exc)
            return
        if len(results) != len(batch):
            raise RuntimeError(f"store_batch gave {len(results)} results for {len(batch)} items")
        if self.batch_sizes is not None:
            self.batch_sizes.observe(len(batch))
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
