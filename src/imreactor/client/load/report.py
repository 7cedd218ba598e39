"""What a load run found: :class:`LoadReport`, its text and its JSON.

The report gives acked messages/s over the sending time and deliveries/s:
verified deliveries over the time from the first send to the last of them; ack and
delivery latencies as nearest-rank percentiles (:class:`Latency`). A report is plain
data: making one is the run's (:meth:`~.driver.LoadRun.report`) or, for a
``--processes`` run, the merge's (:func:`~.multi.merge`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

#: Problems a report lists at the most (the counters count them all).
MAX_PROBLEMS = 20


@dataclass
class Latency:
    """Nearest-rank percentiles of a sample, in milliseconds (None: no sample)."""

    count: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None

    @classmethod
    def of(cls, samples_s: list[float]) -> Latency:
        if not samples_s:
            return cls()
        s = sorted(samples_s)
        n = len(s)

        def rank(q: float) -> float:
            return round(s[max(0, math.ceil(q * n) - 1)] * 1000.0, 3)

        return cls(n, rank(0.50), rank(0.99), round(s[-1] * 1000.0, 3))

    def text(self) -> str:
        if self.p50_ms is None:
            return "-"
        return f"p50 {self.p50_ms:.2f} ms  p99 {self.p99_ms:.2f} ms  max {self.max_ms:.2f} ms"


@dataclass
class LoadReport:
    """The outcome of a run. ``ok``: something was acked and every error counter is 0.

    ``msgs_per_s``: acked messages over ``send_s`` (first send to last ack);
    ``deliveries_per_s``: verified deliveries over ``delivery_s`` (first send to the
    last of them). ``group_size``/``group_id`` are 0 in a 1:1 run.
    """

    ok: bool
    mode: str  # "im" or "echo"
    target: str
    connections: int
    users: int
    group_size: int
    group_id: int
    senders: int
    in_flight: int
    rate: float | None
    logins_ok: int
    logins_refused: int
    logins_failed: int
    login_retries: int
    login_s: float
    logins_per_s: float
    sent: int
    acked: int
    send_s: float
    msgs_per_s: float
    expected_deliveries: int
    deliveries: int
    delivery_s: float
    deliveries_per_s: float
    ack_latency: Latency
    delivery_latency: Latency
    errors: dict[str, int]
    info: dict[str, int]
    problems: list[str]
    loader_cpu_s: float
    #: With ``reconnect``: connections dropped and logged in again, messages they
    #: fetched from history after it, and the longest drop-to-caught-up time.
    reconnects: int = 0
    caught_up: int = 0
    back_max_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        """A human-readable summary (several lines)."""
        return "\n".join([self._headline(), *self._figures(), *self._verdict()])

    def _headline(self) -> str:
        """What ran against what."""
        rate = f", target {self.rate:g}/s" if self.rate else ""
        group = f", group {self.group_id} of {self.group_size}" if self.group_size else ""
        return (
            f"imreactor load ({self.mode} against {self.target}): {self.senders} senders, "
            f"{self.connections} connections{group}, {self.in_flight} in flight per sender{rate}"
        )

    def _figures(self) -> list[str]:
        """One line a measure: logins, messages, latencies, deliveries, reconnects, CPU."""
        what = "round trips" if self.mode == "echo" else "messages"
        login = "connects" if self.mode == "echo" else "logins"
        lines = [
            f"  {login:<17}{self.logins_ok} ok in {self.login_s:.2f} s "
            f"({self.logins_per_s:,.1f}/s); refused {self.logins_refused}, "
            f"failed {self.logins_failed}, retried {self.login_retries}",
            f"  {what:<17}{self.acked:,} acked of {self.sent:,} sent in {self.send_s:.2f} s: "
            f"{self.msgs_per_s:,.0f}/s",
            f"  {'ack latency':<17}{self.ack_latency.text()}",
        ]
        if self.mode == "im":
            lines.append(f"  {'delivery latency':<17}{self.delivery_latency.text()}")
            lines.append(
                f"  {'deliveries':<17}{self.deliveries:,} of {self.expected_deliveries:,} expected"
                f" in {self.delivery_s:.2f} s: {self.deliveries_per_s:,.0f}/s"
            )
        if self.reconnects:
            lines.append(
                f"  {'reconnects':<17}{self.reconnects:,}, each back and caught up within "
                f"{self.back_max_s:.2f} s; {self.caught_up:,} messages caught up from history"
            )
        lines.append(f"  {'loader CPU':<17}{self.loader_cpu_s:.2f} s")
        return lines

    def _verdict(self) -> list[str]:
        """OK, or FAILED with the counters that are not 0 and the problems kept."""
        if self.ok:
            return ["verification: OK"]
        bad = {k: v for k, v in self.errors.items() if v}
        detail = ", ".join(f"{k} {v}" for k, v in bad.items()) or "nothing was acknowledged"
        lines = [f"verification: FAILED ({detail})"]
        lines.extend(f"  - {p}" for p in self.problems)
        if sum(bad.values()) > len(self.problems):
            lines.append(f"  (the first {len(self.problems)} shown)")
        return lines
