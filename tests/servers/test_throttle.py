"""Failed-login throttling (imreactor.servers.msg.throttle) on a fake clock.

Covered: free failures, the growing delay and its cap, lockout and its expiry,
forgetting after a quiet window, per-account and per-address keys kept apart,
success clearing the account but not the address, the bounded tables, counters.
"""

from __future__ import annotations

import pytest

from imreactor.servers.msg.throttle import FailureTable, Limits, LoginThrottle

LIMITS = Limits(free=3, lockout=8, delay_s=1.0, max_delay_s=10.0, lockout_s=100.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def throttle(clock: Clock, max_entries: int = 1000) -> LoginThrottle:
    address = Limits(free=5, lockout=20, delay_s=1.0, max_delay_s=10.0, lockout_s=100.0)
    return LoginThrottle(LIMITS, address, max_entries, clock)


def test_the_wait_grows_from_the_first_failure_past_the_free_ones() -> None:
    waits = [LIMITS.wait_after(n) for n in range(0, 10)]
    assert waits == [0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 4.0, 8.0, 100.0, 100.0]
    capped = Limits(free=0, lockout=10**6, delay_s=1.0, max_delay_s=10.0, lockout_s=100.0)
    assert capped.wait_after(5000) == 10.0  # no float overflow far past the cap


def test_per_account_delay_then_lockout_then_expiry(clock: Clock) -> None:
    t = throttle(clock)
    for _ in range(3):
        assert t.retry_after("alice", "10.0.0.1") == 0.0
        t.failure("alice", "10.0.0.1")
    assert t.retry_after("alice", "10.0.0.1") == 0.0  # 3 free failures
    t.failure("alice", "10.0.0.1")
    assert t.retry_after("alice", "10.0.0.9") == 1.0  # the account waits, from any address
    assert t.retry_after("bob", "10.0.0.9") == 0.0  # other accounts do not
    clock.now += 1.0
    assert t.retry_after("alice", "10.0.0.9") == 0.0
    for _ in range(4):  # failures 5..8: the 8th locks the account
        clock.now += 10.0
        locked = t.failure("alice", "10.0.0.1")
    assert locked == ["account"]
    assert t.lockouts == 1
    assert t.retry_after("alice", "10.0.0.2") == 100.0
    clock.now += 99.0
    assert t.retry_after("alice", "10.0.0.2") == pytest.approx(1.0)
    clock.now += 1.0  # the lockout is over and the count forgotten
    assert t.retry_after("alice", "10.0.0.2") == 0.0
    assert t.accounts.failures("alice") == 0


def test_throttled_attempts_are_counted_and_do_not_lengthen_the_wait(clock: Clock) -> None:
    t = throttle(clock)
    for _ in range(5):
        t.failure("alice", "10.0.0.1")
    assert t.retry_after("alice", "10.0.0.1") == 2.0
    for _ in range(50):
        assert t.retry_after("alice", "10.0.0.1") > 0.0
    assert t.throttled == 51
    assert t.accounts.failures("alice") == 5
    clock.now += 2.0
    assert t.retry_after("alice", "10.0.0.1") == 0.0


def test_per_address_counts_failures_over_many_names(clock: Clock) -> None:
    t = throttle(clock)
    for i in range(5):
        t.failure(f"guess{i}", "10.0.0.66")
    assert t.retry_after("fresh-name", "10.0.0.66") == 0.0  # 5 free per address
    t.failure("guess5", "10.0.0.66")
    assert t.retry_after("fresh-name", "10.0.0.66") == 1.0
    assert t.retry_after("fresh-name", "10.0.0.67") == 0.0  # other addresses are not slowed
    for i in range(6, 20):
        clock.now += 10.0
        locked = t.failure(f"guess{i}", "10.0.0.66")
    assert locked == ["address"]
    assert t.retry_after("alice", "10.0.0.66") == 100.0


def test_success_clears_the_account_but_not_the_address(clock: Clock) -> None:
    t = throttle(clock)
    for _ in range(6):
        t.failure("alice", "10.0.0.1")
    t.success("alice")
    assert t.accounts.failures("alice") == 0
    assert t.addresses.failures("10.0.0.1") == 6
    assert t.retry_after("alice", "10.0.0.1") == 1.0  # the address still waits


def test_a_quiet_key_is_forgotten(clock: Clock) -> None:
    t = throttle(clock)
    for _ in range(4):
        t.failure("alice", "10.0.0.1")
    clock.now += 100.0
    assert t.accounts.failures("alice") == 0
    t.failure("alice", "10.0.0.1")  # counts from 1 again: free
    assert t.retry_after("alice", "10.0.0.1") == 0.0


def test_tables_are_bounded_oldest_failure_first_out(clock: Clock) -> None:
    table = FailureTable(LIMITS, 3, clock)
    for name in ("a", "b", "c"):
        table.fail(name)
        clock.now += 1.0
    table.fail("a")  # a is now the newest
    table.fail("d")  # evicts b, the oldest
    assert len(table) == 3
    assert [table.failures(k) for k in ("a", "b", "c", "d")] == [2, 0, 1, 1]
