"""Every server's metrics, health and readiness, served over HTTP on its own loop.

Each server builds one :class:`Metrics`: a ``prometheus_client`` registry holding
the process collector (memory, CPU, open files), the loop's counters
(iterations, busy time, worst iteration, lag), this process's PDU traffic
(:mod:`imreactor.pdu.traffic`) and the server's own counters, gauges and
histograms. :meth:`Metrics.listen` serves ``/metrics`` (Prometheus text
exposition, from ``prometheus_client``), ``/healthz`` (the loop answers) and
``/readyz`` (the server's own test) with :mod:`imreactor.http` on the server's
loop: no exporter thread, and a scrape sees the loop's state between two
iterations.

The server's metrics are the light :class:`Counter` and :class:`Histogram` here,
not ``prometheus_client``'s own: those take a lock on every update, and the
counts here sit on the message path (a delivery, a store). These are plain
numbers that exactly one thread writes (the loop thread, or a server's one
writer thread for what only it observes); a scrape reads them, and the
registry's collector turns them into metric families at scrape time.
"""

from __future__ import annotations

import bisect
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from ssl import SSLContext
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import Collector

from ..http import JSON, TEXT, HttpProtocol, Request, Response, Router
from ..net import EventLoop, Server
from ..pdu.registry import command_ids, command_name
from ..pdu.traffic import TRAFFIC, Traffic

__all__ = [
    "LATENCY_BUCKETS_S",
    "SIZE_BUCKETS",
    "Counter",
    "Histogram",
    "Metrics",
    "bucket_quantile",
]

log = logging.getLogger(__name__)

#: Latency buckets (seconds): from a loop-local answer to a slow database.
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
#: Buckets for counts per batch (group commit, say).
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
#: How often the loop-lag probe fires; its lateness is the lag.
LAG_PROBE_S = 0.25

Readiness = Callable[[], tuple[bool, dict[str, Any]]]
"""``() -> (ready, details)``: the server's own readiness test, for ``/readyz``."""


class Counter:
    """A counter with fixed label names; one thread writes it.

    ``inc(*label_values)`` adds 1 (or ``amount``) to the series of those labels.
    """

    __slots__ = ("doc", "labels", "name", "values")

    def __init__(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> None:
        self.name = name
        self.doc = doc
        self.labels = labels
        self.values: dict[tuple[str, ...], float] = {} if labels else {(): 0.0}

    def inc(self, *label_values: str, amount: float = 1.0) -> None:
        values = self.values
        values[label_values] = values.get(label_values, 0.0) + amount

    def value(self, *label_values: str) -> float:
        return self.values.get(label_values, 0.0)

    def family(self) -> Metric:
        family = CounterMetricFamily(self.name, self.doc, labels=self.labels)
        for labels, value in sorted(self.values.items()):
            family.add_metric(list(labels), value)
        return family


class Histogram:
    """A histogram with fixed upper bounds; one thread writes it."""

    __slots__ = ("bounds", "count", "counts", "doc", "name", "sum")

    def __init__(self, name: str, doc: str, bounds: Iterable[float] = LATENCY_BUCKETS_S) -> None:
        self.name = name
        self.doc = doc
        self.bounds = sorted(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bucket ("le").
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def quantile(self, q: float) -> float:
        """The upper bound of the bucket holding quantile ``q`` (``inf`` past the
        last bound, 0 with no observations): what a dashboard shows as p99."""
        return bucket_quantile(self.bounds, self.counts, q)

    def family(self) -> Metric:
        buckets: list[tuple[str, float]] = []
        seen = 0
        for bound, n in zip([*self.bounds, float("inf")], self.counts, strict=True):
            seen += n
            buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), seen))
        family = HistogramMetricFamily(self.name, self.doc)
        family.add_metric([], buckets, self.sum)
        return family


def bucket_quantile(bounds: Sequence[float], counts: Sequence[int], q: float) -> float:
    """Quantile ``q`` (0 < q <= 1) of observations counted per bucket: the upper bound of
    the first bucket where the running count reaches ``q`` of the total.

    ``counts`` has one entry per bound and a last one for +Inf (not cumulative); a
    quantile in that last bucket is ``inf``; no observations give 0. The answer is
    an upper bound on the true quantile, exact to within one bucket, which is all a
    histogram can say. Counts over an interval (one snapshot's counts minus an earlier
    one's) give the quantile over that interval.
    """
    total = sum(counts)
    if not total:
        return 0.0
    rank = q * total
    seen = 0
    for bound, n in zip(bounds, counts, strict=False):
        seen += n
        if seen >= rank:
            return bound
    return float("inf")


GaugeSource = Callable[[], float | dict[tuple[str, ...], float]]


class _Collector(Collector):
    """Turns the loop, the traffic and a server's own metrics into metric families."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        loop = m.loop
        yield CounterMetricFamily(
            "imreactor_loop_iterations", "Loop iterations run", value=loop.iterations
        )
        busy = max(0.0, (loop.time() - m.started_at) - (loop.idle_s - m.idle_at_start))
        yield CounterMetricFamily(
            "imreactor_loop_busy_seconds", "Time the loop spent working, not waiting", value=busy
        )
        # The worst since the previous scrape: a scrape resets it.
        worst, loop.max_busy_s = loop.max_busy_s, 0.0
        yield GaugeMetricFamily(
            "imreactor_loop_max_iteration_seconds",
            "Longest single iteration since the previous scrape",
            value=worst,
        )
        yield m.loop_lag.family()
        yield from _traffic_families(m.traffic)
        for metric in m.own:
            yield metric.family()
        for name, (doc, read) in m.counters_read.items():
            yield CounterMetricFamily(name, doc, value=read())
        for name, (doc, labels, source) in m.gauges.items():
            family = GaugeMetricFamily(name, doc, labels=labels)
            value = source()
            if isinstance(value, dict):
                for label_values, v in sorted(value.items()):
                    family.add_metric(list(label_values), v)
            else:
                family.add_metric([], value)
            yield family


def _traffic_families(traffic: Traffic) -> Iterator[Metric]:
    known = command_ids()
    for name, doc, counts in (
        ("imreactor_pdus_received", "PDUs received, by command", traffic.received),
        ("imreactor_pdus_sent", "PDUs sent, by command", traffic.sent),
    ):
        family = CounterMetricFamily(name, doc, labels=("command",))
        by_name: dict[str, int] = {}
        for cid, n in counts.items():
            # Ids no enum names are one series: a peer sending garbage ids must not
            # make a series per id.
            label = command_name(cid) if cid in known else "unknown"
            by_name[label] = by_name.get(label, 0) + n
        for label, n in sorted(by_name.items()):
            family.add_metric([label], n)
        yield family
    errors = CounterMetricFamily(
        "imreactor_pdu_errors", "PDUs refused or failed, by kind", labels=("kind",)
    )
    for kind, n in sorted(traffic.errors.items()):
        errors.add_metric([kind], n)
    yield errors


class Metrics:
    """One server's registry, with ``/metrics``, ``/healthz`` and ``/readyz``.

    Loop thread only, except that a :class:`Counter` or :class:`Histogram` may be
    written by the one other thread that owns it.
    """

    def __init__(self, loop: EventLoop, role: str, ready: Readiness | None = None) -> None:
        self.loop = loop
        self.role = role
        self.ready = ready or (lambda: (True, {}))
        self.traffic = TRAFFIC
        self.started_at = loop.time()
        self.idle_at_start = loop.idle_s
        self.own: list[Counter | Histogram] = []
        self.gauges: dict[str, tuple[str, tuple[str, ...], GaugeSource]] = {}
        self.counters_read: dict[str, tuple[str, Callable[[], float]]] = {}
        self.loop_lag = Histogram(
            "imreactor_loop_lag_seconds",
            f"How late a {LAG_PROBE_S:g} s timer fires: time callbacks wait for the loop",
        )
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)
        self.registry.register(_Collector(self))
        self._probe_due = loop.time() + LAG_PROBE_S
        self._probe = loop.call_at(self._probe_due, self._probe_lag)
        self._servers: list[Server] = []

    # -- the server's own metrics ---------------------------------------------------------

    def counter(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
        counter = Counter(name, doc, labels)
        self.own.append(counter)
        return counter

    def histogram(
        self, name: str, doc: str, bounds: Iterable[float] = LATENCY_BUCKETS_S
    ) -> Histogram:
        histogram = Histogram(name, doc, bounds)
        self.own.append(histogram)
        return histogram

    def gauge(self, name: str, doc: str, source: GaugeSource, labels: tuple[str, ...] = ()) -> None:
        """A gauge read from ``source()`` at each scrape: a number, or label values → number."""
        self.gauges[name] = (doc, labels, source)

    def counted(self, name: str, doc: str, source: Callable[[], float]) -> None:
        """A counter kept elsewhere (an attribute that only grows), read at each scrape."""
        self.counters_read[name] = (doc, source)

    # -- serving --------------------------------------------------------------------------

    def routes(self, router: Router) -> None:
        """Add ``/metrics``, ``/healthz`` and ``/readyz`` to ``router``."""
        router.add("/metrics", self._http_metrics)
        router.add("/healthz", self._http_healthz)
        router.add("/readyz", self._http_readyz)

    def listen(self, host: str, port: int, ssl: SSLContext | None = None) -> Server:
        """Serve the three endpoints on ``host:port``; closed by :meth:`close`."""
        router = Router()
        self.routes(router)
        server = self.loop.listen(host, port, lambda: HttpProtocol(router), ssl=ssl)
        self._servers.append(server)
        return server

    def close(self) -> None:
        self._probe.cancel()
        for server in self._servers:
            server.close()
        self._servers.clear()

    def text(self) -> bytes:
        """The exposition text of everything in the registry."""
        return generate_latest(self.registry)

    def _http_metrics(self, request: Request) -> Response:
        # The classic text format (names escaped to underscores), which every
        # Prometheus version reads.
        return 200, CONTENT_TYPE_PLAIN_0_0_4, self.text()

    def _http_healthz(self, request: Request) -> Response:
        # Answered by the loop itself: a loop that is stuck answers nothing.
        return 200, TEXT, b"ok\n"

    def _http_readyz(self, request: Request) -> Response:
        ready, details = self.ready()
        body = json.dumps({"ready": ready, "role": self.role, **details}).encode() + b"\n"
        return (200 if ready else 503), JSON, body

    def _probe_lag(self) -> None:
        now = self.loop.time()
        self.loop_lag.observe(max(0.0, now - self._probe_due))
        self._probe_due = now + LAG_PROBE_S
        self._probe = self.loop.call_at(self._probe_due, self._probe_lag)
