"""The worker pool on every backend: results and exceptions come back to callbacks on the
loop thread, tasks with one key run in submission order, a bounded queue raises PoolFull,
and shutdown lets queued tasks finish."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from imreactor.net import DeadlineExpired, EventLoop, PoolFull, WorkerPool
from imreactor.net.workers import ResultCallback

from .helpers import DEADLINE_S, RunUntil

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def pool(loop: EventLoop) -> Iterator[WorkerPool]:
    workers = WorkerPool(loop, threads=4, max_pending=1000)
    try:
        yield workers
    finally:
        workers.shutdown()


def test_results_come_back_on_the_loop_thread(
    loop: EventLoop, pool: WorkerPool, run_until: RunUntil
) -> None:
    loop_thread = threading.get_ident()
    results: list[tuple[int, Any, BaseException | None, int]] = []
    ran_on: list[int] = []

    def square(x: int) -> int:
        ran_on.append(threading.get_ident())
        return x * x

    def collect(i: int) -> ResultCallback:
        return lambda r, e: results.append((i, r, e, threading.get_ident()))

    for i in range(50):
        pool.submit(square, i, callback=collect(i))
    run_until(lambda: len(results) == 50)
    assert sorted((i, r) for i, r, _, _ in results) == [(i, i * i) for i in range(50)]
    assert all(e is None for _, _, e, _ in results)
    assert {t for *_, t in results} == {loop_thread}, "callbacks must run on the loop thread"
    assert loop_thread not in ran_on, "the work must not run on the loop thread"
    run_until(lambda: pool.pending == 0)


def test_exceptions_are_delivered_to_the_callback(
    loop: EventLoop, pool: WorkerPool, run_until: RunUntil
) -> None:
    got: list[tuple[Any, BaseException | None]] = []

    def fail() -> None:
        raise KeyError("missing")

    pool.submit(fail, callback=lambda r, e: got.append((r, e)))
    run_until(lambda: got)
    result, exc = got[0]
    assert result is None
    assert isinstance(exc, KeyError)


def test_tasks_with_one_key_run_in_order(
    loop: EventLoop, pool: WorkerPool, run_until: RunUntil
) -> None:
    rng = random.Random(5)
    ran: dict[str, list[int]] = {"alice": [], "bob": []}
    called_back: dict[str, list[int]] = {"alice": [], "bob": []}
    active: dict[str, int] = {"alice": 0, "bob": 0}
    overlaps: list[str] = []
    lock = threading.Lock()

    def task(key: str, i: int, nap: float) -> int:
        with lock:
            active[key] += 1
            if active[key] > 1:
                overlaps.append(key)
        time.sleep(nap)
        ran[key].append(i)
        with lock:
            active[key] -= 1
        return i

    def collect(key: str) -> ResultCallback:
        return lambda r, e: called_back[key].append(r)

    for i in range(40):
        for key in ("alice", "bob"):
            nap = rng.choice([0, 0, 0.001])
            pool.submit(task, key, i, nap, key=key, callback=collect(key))
    run_until(lambda: all(len(v) == 40 for v in called_back.values()))
    for key in ("alice", "bob"):
        assert ran[key] == list(range(40)), f"{key}'s tasks ran out of order"
        assert called_back[key] == list(range(40)), f"{key}'s callbacks ran out of order"
    assert overlaps == [], "two tasks of one key ran at the same time"


def test_a_full_queue_raises_pool_full(loop: EventLoop, run_until: RunUntil) -> None:
    pool = WorkerPool(loop, threads=2, max_pending=3)
    release = threading.Event()
    done: list[object] = []
    try:
        for _ in range(3):
            pool.submit(release.wait, DEADLINE_S, callback=lambda r, e: done.append(r))
        assert pool.pending == 3
        with pytest.raises(PoolFull):
            pool.submit(lambda: None)
        release.set()
        run_until(lambda: len(done) == 3)
        assert done == [True, True, True]
        assert pool.pending == 0
        pool.submit(lambda: "again", callback=lambda r, e: done.append(r))
        run_until(lambda: len(done) == 4)
        assert done[-1] == "again"
    finally:
        release.set()
        pool.shutdown()


def test_shutdown_finishes_queued_tasks_then_refuses(loop: EventLoop, run_until: RunUntil) -> None:
    pool = WorkerPool(loop, threads=1)
    finished: list[int] = []

    def task(i: int) -> None:
        time.sleep(0.005)
        finished.append(i)

    for i in range(5):
        pool.submit(task, i)
    pool.shutdown(wait=True)
    pool.shutdown()  # idempotent
    assert finished == [0, 1, 2, 3, 4]
    with pytest.raises(RuntimeError):
        pool.submit(lambda: None)
    with pytest.raises(ValueError):
        WorkerPool(loop, threads=0)


def test_a_task_without_callback_that_fails_is_logged(
    loop: EventLoop, pool: WorkerPool, run_until: RunUntil, caplog: pytest.LogCaptureFixture
) -> None:
    def fail() -> None:
        raise RuntimeError("lost in a thread?")

    pool.submit(fail)
    deadline = time.monotonic() + DEADLINE_S
    while not any("failed" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, "the failure was not logged"
        time.sleep(0.01)


def test_a_task_past_its_deadline_is_dropped_unstarted(
    loop: EventLoop, run_until: RunUntil
) -> None:
    pool = WorkerPool(loop, threads=1)
    release = threading.Event()
    ran: list[str] = []
    answers: list[tuple[object, BaseException | None]] = []
    try:
        # The one worker is busy, so the next two tasks wait in its queue.
        pool.submit(release.wait, DEADLINE_S)
        # A deadline that passes while the task waits (a short one, met before release).
        expires = loop.time() + 0.001
        pool.submit(
            ran.append, "late", deadline=expires, callback=lambda r, e: answers.append((r, e))
        )
        pool.submit(ran.append, "no deadline", callback=lambda r, e: answers.append((r, e)))
        while loop.time() < expires:
            time.sleep(0.001)
        release.set()
        run_until(lambda: len(answers) == 2)
        assert ran == ["no deadline"], "a task past its deadline ran"
        assert isinstance(answers[0][1], DeadlineExpired)
        assert answers[1] == (None, None)
        assert pool.expired == 1
        assert pool.pending == 0
    finally:
        release.set()
        pool.shutdown()


def test_a_task_before_its_deadline_runs(loop: EventLoop, run_until: RunUntil) -> None:
    pool = WorkerPool(loop, threads=1)
    answers: list[tuple[object, BaseException | None]] = []
    try:
        pool.submit(
            lambda: "ran",
            deadline=loop.time() + DEADLINE_S,
            callback=lambda r, e: answers.append((r, e)),
        )
        run_until(lambda: len(answers) == 1)
        assert answers == [("ran", None)]
        assert pool.expired == 0
    finally:
        pool.shutdown()
