"""Failed-login throttling: per account name and per source address.

Online password guessing is limited by counting failed logins under two keys, the
account name as sent and the client's IP address, each with its own thresholds:

- the first ``free`` failures of a key cost nothing;
- after that, each further failure makes the key wait before its next attempt:
  ``delay_s``, doubling with every failure, at most ``max_delay_s``;
- at ``lockout`` failures the key is locked for ``lockout_s``;
- a key with no failure for ``lockout_s`` is forgotten (its count starts again).

An attempt under a key that is waiting or locked is *throttled*: msg_server answers
it with the normal login failure and never asks db_proxy, so it costs no password
hash. A failure is recorded only for an attempt that reached db_proxy and was
refused, so a throttled attempt does not lengthen its own wait; an attacker gains
nothing by retrying early. A successful login clears its account's count but not
its address's, so interleaving one good login does not reset an address's budget.

The tables hold at most ``max_entries`` keys each, oldest failure first out, so a
flood of made-up names costs bounded memory; an evicted key merely starts again.

Counts live in one msg_server process: with k msg_servers an attacker who spreads
attempts over all of them gets k times the budget (docs/servers.md, "Login
throttling"). Loop thread only; the clock is injected so tests can run on a fake one.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Thresholds for one kind of key (docstring of this module)."""

    free: int
    lockout: int
    delay_s: float
    max_delay_s: float
    lockout_s: float

    def wait_after(self, failures: int) -> float:
        """How long a key with ``failures`` failures waits before its next attempt."""
        if failures >= self.lockout:
            return self.lockout_s
        if failures <= self.free:
            return 0.0
        # 2 ** n overflows float only for n past 1023; the cap applies long before.
        return min(self.delay_s * 2.0 ** min(failures - self.free - 1, 64), self.max_delay_s)


class _Record:
    __slots__ = ("failures", "last", "until")

    def __init__(self) -> None:
        self.failures = 0
        self.last = 0.0  # clock time of the latest failure
        self.until = 0.0  # no attempt before this clock time


class FailureTable:
    """Failure counts by key under one set of :class:`Limits`."""

    def __init__(self, limits: Limits, max_entries: int, clock: Callable[[], float]) -> None:
        self.limits = limits
        self.max_entries = max_entries
        self._clock = clock
        self._records: OrderedDict[str, _Record] = OrderedDict()  # oldest failure first

    def __len__(self) -> int:
        return len(self._records)

    def _live(self, key: str, now: float) -> _Record | None:
        record = self._records.get(key)
        if record is not None and now - record.last >= self.limits.lockout_s:
            del self._records[key]  # quiet long enough: forgotten
            return None
        return record

    def retry_after(self, key: str) -> float:
        """Seconds until ``key`` may try again; 0.0 when it may now."""
        now = self._clock()
        record = self._live(key, now)
        return 0.0 if record is None else max(0.0, record.until - now)

    def failures(self, key: str) -> int:
        """Failures counted for ``key`` now (0 once forgotten)."""
        record = self._live(key, self._clock())
        return 0 if record is None else record.failures

    def fail(self, key: str) -> None:
        """Count one failed attempt of ``key``."""
        now = self._clock()
        record = self._live(key, now)
        if record is None:
            record = self._records[key] = _Record()
            while len(self._records) > self.max_entries:
                self._records.popitem(last=False)
        else:
            self._records.move_to_end(key)
        record.failures += 1
        record.last = now
        record.until = now + self.limits.wait_after(record.failures)

    def clear(self, key: str) -> None:
        """Forget ``key`` (its owner proved itself)."""
        self._records.pop(key, None)


class LoginThrottle:
    """The account table and the address table together, with counters for metrics."""

    def __init__(
        self,
        account: Limits,
        address: Limits,
        max_entries: int,
        clock: Callable[[], float],
    ) -> None:
        self.accounts = FailureTable(account, max_entries, clock)
        self.addresses = FailureTable(address, max_entries, clock)
        self.throttled = 0  # attempts refused without asking db_proxy
        self.failed = 0  # failures recorded
        self.lockouts = 0  # keys that reached their lockout threshold

    def retry_after(self, account: str, address: str) -> float:
        """Seconds until an attempt of ``account`` from ``address`` is allowed (0.0: now).

        A positive answer counts the attempt as throttled; the caller refuses it.
        """
        wait = max(self.accounts.retry_after(account), self.addresses.retry_after(address))
        if wait > 0.0:
            self.throttled += 1
        return wait

    def failure(self, account: str, address: str) -> list[str]:
        """Record a login db_proxy refused (wrong password, unknown name, disabled).

        Returns which of ``"account"`` and ``"address"`` this failure locked out.
        """
        self.failed += 1
        locked = []
        for kind, table, key in (
            ("account", self.accounts, account),
            ("address", self.addresses, address),
        ):
            table.fail(key)
            if table.failures(key) == table.limits.lockout:
                self.lockouts += 1
                locked.append(kind)
        return locked

    def success(self, account: str) -> None:
        """Record a login that succeeded: the account's count starts again."""
        self.accounts.clear(account)
