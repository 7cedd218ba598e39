"""The group-commit writer driven by a fake store: what each kind of failure fails.

The fake store records every batch it is given and can be told to refuse one item
(a per-item error), to be down (every batch fails), to block until released, or to
break its contract; the writer must fail only what it has to and keep running.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import CancelledError

import pytest

from imreactor.servers.dbproxy.writer import GroupCommitWriter, StoreTimeout

WAIT_S = 10.0


class ItemRefused(Exception):
    """One item is at fault: the writer may retry the others alone."""


class DatabaseDown(Exception):
    """Nothing can be stored."""


class FakeStore:
    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.stored: list[int] = []
        self.refuse: set[int] = set()
        self.down = False
        self.short = False  # returns one result too few
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, items: Sequence[int]) -> Sequence[int]:
        self.batches.append(list(items))
        self.entered.set()
        assert self.gate.wait(WAIT_S)
        if self.down:
            raise DatabaseDown("connection refused")
        if self.refuse & set(items):
            raise ItemRefused(f"refused {sorted(self.refuse & set(items))}")
        self.stored.extend(items)
        results = [i * 10 for i in items]
        return results[:-1] if self.short else results


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


@pytest.fixture
def writer(store: FakeStore) -> Iterator[GroupCommitWriter[int, int]]:
    w: GroupCommitWriter[int, int] = GroupCommitWriter(
        store, max_batch=64, retry_alone=(ItemRefused,)
    )
    yield w
    w.close()


def hold(store: FakeStore, writer: GroupCommitWriter[int, int]) -> None:
    """Block the writer inside a transaction of item 0, so that what follows queues."""
    store.gate.clear()
    store.entered.clear()
    writer.submit(0)
    assert store.entered.wait(WAIT_S)


def test_queued_items_share_one_transaction_in_order(
    store: FakeStore, writer: GroupCommitWriter[int, int]
) -> None:
    hold(store, writer)
    seen: list[int] = []
    futures = [writer.submit(i, seen.append) for i in range(1, 6)]
    store.gate.set()
    assert [f.result(WAIT_S) for f in futures] == [10, 20, 30, 40, 50]
    assert store.batches == [[0], [1, 2, 3, 4, 5]]
    assert seen == [10, 20, 30, 40, 50]  # on_commit in commit order


def test_a_per_item_error_fails_that_item_only(
    store: FakeStore, writer: GroupCommitWriter[int, int]
) -> None:
    hold(store, writer)
    store.refuse = {3}
    futures = [writer.submit(i) for i in range(1, 6)]
    store.gate.set()
    with pytest.raises(ItemRefused, match=r"refused \[3\]"):
        futures[2].result(WAIT_S)
    assert [futures[i].result(WAIT_S) for i in (0, 1, 3, 4)] == [10, 20, 40, 50]
    assert store.batches[1:] == [[1, 2, 3, 4, 5], [1], [2], [3], [4], [5]]
    assert store.stored == [0, 1, 2, 4, 5]


def test_a_database_that_is_down_fails_the_batch_without_retries(
    store: FakeStore, writer: GroupCommitWriter[int, int]
) -> None:
    hold(store, writer)
    store.down = True
    futures = [writer.submit(i) for i in range(1, 5)]
    store.gate.set()
    for f in futures:
        with pytest.raises(DatabaseDown):
            f.result(WAIT_S)
    assert store.batches == [[0], [1, 2, 3, 4]]  # one try each, nothing one by one
    store.down = False
    assert writer.store(9, timeout_s=WAIT_S) == 90  # and it stores again once it is back


def test_cancelled_items_are_never_stored(
    store: FakeStore, writer: GroupCommitWriter[int, int]
) -> None:
    hold(store, writer)
    kept, dropped = writer.submit(1), writer.submit(2)
    assert dropped.cancel()
    store.gate.set()
    assert kept.result(WAIT_S) == 10
    with pytest.raises(CancelledError):
        dropped.result(WAIT_S)
    assert 2 not in store.stored


def test_a_store_that_times_out_before_its_batch_is_never_stored(
    store: FakeStore, writer: GroupCommitWriter[int, int]
) -> None:
    hold(store, writer)
    with pytest.raises(StoreTimeout, match="not stored"):
        writer.store(7, timeout_s=0.05)
    store.gate.set()
    assert writer.store(8, timeout_s=WAIT_S) == 80
    assert 7 not in store.stored


def test_a_store_already_in_its_transaction_waits_for_the_outcome(
    store: FakeStore, writer: GroupCommitWriter[int, int]
) -> None:
    store.gate.clear()
    store.entered.clear()
    result: list[int] = []
    worker = threading.Thread(target=lambda: result.append(writer.store(4, timeout_s=0.05)))
    worker.start()
    assert store.entered.wait(WAIT_S)  # item 4's transaction is running
    worker.join(0.2)
    assert worker.is_alive(), "gave up on an item whose transaction may commit"
    store.gate.set()
    worker.join(WAIT_S)
    assert result == [40]


def test_a_broken_contract_fails_the_batch_and_the_writer_lives_on(
    store: FakeStore, writer: GroupCommitWriter[int, int]
) -> None:
    hold(store, writer)
    store.short = True
    futures = [writer.submit(i) for i in (1, 2)]
    store.gate.set()
    for f in futures:
        with pytest.raises(RuntimeError, match="gave 1 results for 2 items"):
            f.result(WAIT_S)
    store.short = False
    assert writer.store(3, timeout_s=WAIT_S) == 30


def test_a_failing_on_commit_hook_does_not_fail_the_item(
    writer: GroupCommitWriter[int, int], caplog: pytest.LogCaptureFixture
) -> None:
    def hook(result: int) -> None:
        raise ValueError("hook broke")

    assert writer.store(5, hook, timeout_s=WAIT_S) == 50
    assert "on_commit hook failed" in caplog.text


def test_a_queue_longer_than_max_batch_is_stored_in_batches_of_max_batch(
    store: FakeStore,
) -> None:
    writer: GroupCommitWriter[int, int] = GroupCommitWriter(store, max_batch=4)
    try:
        hold(store, writer)
        futures = [writer.submit(i) for i in range(1, 11)]
        store.gate.set()
        assert [f.result(WAIT_S) for f in futures] == [i * 10 for i in range(1, 11)]
        assert store.batches == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]
    finally:
        writer.close()


def test_close_stores_what_is_queued_before_it_stops(store: FakeStore) -> None:
    writer: GroupCommitWriter[int, int] = GroupCommitWriter(store, max_batch=64)
    hold(store, writer)
    futures = [writer.submit(i) for i in range(1, 4)]
    closer = threading.Thread(target=writer.close)
    closer.start()
    store.gate.set()
    closer.join(WAIT_S)
    assert not closer.is_alive()
    assert [f.result(0) for f in futures] == [10, 20, 30]
    assert store.stored == [0, 1, 2, 3]
