"""servers/metrics.py: the light metrics, their exposition, and the three endpoints."""

from __future__ import annotations

import json
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from imreactor.net import EventLoop
from imreactor.net.testing import FakeClock
from imreactor.servers.metrics import Counter, Histogram, Metrics

from .conftest import scrape


def test_counter_series_per_label_values() -> None:
    c = Counter("imreactor_things", "things", ("kind",))
    c.inc("a")
    c.inc("a", amount=2)
    c.inc("b")
    assert (c.value("a"), c.value("b"), c.value("c")) == (3, 1, 0)
    samples = {s.labels["kind"]: s.value for s in c.family().samples}
    assert samples == {"a": 3, "b": 1}


def test_histogram_buckets_are_cumulative_and_le_inclusive() -> None:
    h = Histogram("imreactor_wait_seconds", "waits", (0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 2.0):
        h.observe(v)
    buckets = {
        s.labels.get("le"): s.value for s in h.family().samples if s.name.endswith("_bucket")
    }
    assert buckets == {"0.1": 2, "1.0": 3, "+Inf": 4}
    assert h.count == 4
    assert h.sum == pytest.approx(2.65)
    assert (h.quantile(0.5), h.quantile(0.75), h.quantile(1.0)) == (0.1, 1.0, float("inf"))
    assert Histogram("x", "x").quantile(0.99) == 0.0


def test_loop_lag_is_observed_and_the_worst_iteration_resets_per_scrape() -> None:
    clock = FakeClock()
    loop = EventLoop(clock=clock)
    try:
        metrics = Metrics(loop, "test")
        clock.advance(0.75)  # the 0.25 s probe fires half a second late
        loop.run_once(0)
        assert metrics.loop_lag.count == 1
        assert metrics.loop_lag.sum == pytest.approx(0.5)
        loop.max_busy_s = 0.3
        text = metrics.text().decode()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        assert families["imreactor_loop_max_iteration_seconds"].samples[0].value == 0.3
        assert loop.max_busy_s == 0.0  # read by the scrape
        metrics.close()
    finally:
        loop.close()


@pytest.fixture
def served() -> Iterator[tuple[Metrics, int, list[bool]]]:
    loop = EventLoop()
    ready = [False]
    metrics = Metrics(loop, "test", lambda: (ready[0], {"why": "told so"}))
    served = metrics.counter("imreactor_test_served", "served")
    served.inc()
    port = metrics.listen("127.0.0.1", 0).port
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    yield metrics, port, ready
    loop.call_soon_threadsafe(metrics.close)
    loop.stop()
    thread.join(5)
    loop.close()


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as rsp:
            return rsp.status, rsp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_endpoints_and_bad_requests(served: tuple[Metrics, int, list[bool]]) -> None:
    _, port, ready = served
    assert get(port, "/healthz") == (200, b"ok\n")
    status, body = get(port, "/readyz")
    assert (status, json.loads(body)) == (503, {"ready": False, "role": "test", "why": "told so"})
    ready[0] = True
    assert get(port, "/readyz")[0] == 200
    metrics = scrape(f"http://127.0.0.1:{port}/metrics")
    assert metrics[("imreactor_test_served_total", ())] == 1
    # Garbage gets 400 and a close; the endpoint goes on serving others.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"\x00\x01 not http\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 400 ")
    assert get(port, "/nothing")[0] == 404
    assert get(port, "/healthz")[0] == 200
