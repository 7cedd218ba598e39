"""msg_server's stats report (servers/msg/report.py), on a fake clock and in-memory links.

A real MsgServer (started on a free loopback port, with no peers configured) has its
login_server link connected in memory
to a real LoginServer's end of the link, so the report travels as PDUs and ends in
login_server's dashboard data.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from imreactor.net import EventLoop
from imreactor.net.testing import FakeClock, transport_pair
from imreactor.pdu.imconn import Dispatcher, LinkPolicy
from imreactor.servers.links import Link
from imreactor.servers.login.config import LoginConfig
from imreactor.servers.login.server import LoginServer
from imreactor.servers.msg.config import MsgConfig
from imreactor.servers.msg.report import REPORT_INTERVAL_S, stats_report
from imreactor.servers.msg.server import MsgServer

QUIET = LinkPolicy(heartbeat_s=None, timeout_s=None)


class Harness:
    def __init__(self) -> None:
        self.clock = FakeClock(100.0)
        self.loop = EventLoop(clock=self.clock)
        config = MsgConfig(host_name="m1", port=0, login_servers=[], db_proxies=[])
        self.msg = MsgServer(self.loop, config)
        self.login = LoginServer(self.loop, LoginConfig())

    def link(self) -> None:
        # The msg_server's login link, connected in memory to login_server's side of it;
        # its on_up announces the msg_server (IMMsgServInfo) as over TCP.
        link = Link(self.msg.login, Dispatcher[Link](), QUIET)
        transport_pair(self.loop, link, self.login._msg_link())
        self.settle()

    def settle(self) -> None:
        for _ in range(10):
            self.loop.run_once(0)

    def tick(self, seconds: float = REPORT_INTERVAL_S) -> None:
        self.clock.advance(seconds)
        self.settle()

    def close(self) -> None:
        self.msg.close()
        self.login.close()
        self.loop.close()


@pytest.fixture
def h() -> Iterator[Harness]:
    harness = Harness()
    yield harness
    harness.close()


def test_a_report_holds_the_counts_and_every_histogram(h: Harness) -> None:
    stats = h.msg.stats
    for _ in range(3):
        stats.messages.inc("stored")
    stats.messages.inc("not_stored")
    stats.deliveries.inc(amount=5)
    stats.store_latency.observe(0.003)
    h.clock.advance(2.5)
    report = stats_report(stats, connections=7, users_online=4)
    assert (report.connections, report.users_online) == (7, 4)
    assert (report.messages_stored, report.deliveries) == (3, 5)
    assert report.uptime_ms == 2500
    latencies = {latency.name: latency for latency in report.latencies}
    assert set(latencies) == {"store", "delivery", "login", "loop_lag"}
    store = latencies["store"]
    assert len(store.counts) == len(store.bounds_s) + 1 and sum(store.counts) == 1
    assert list(store.bounds_s) == stats.store_latency.bounds
    errors = {e.kind: e.count for e in report.errors}
    assert errors["message_not_stored"] == 1 and errors["login_unavailable"] == 0
    assert report.IsInitialized()


def test_reports_reach_the_dashboard_each_interval(h: Harness) -> None:
    h.msg.start()
    h.link()
    [row] = h.login.dashboard.data()["msg_servers"]
    assert row["name"] == "m1" and row["stale"]  # registered, no report yet
    h.tick()
    [row] = h.login.dashboard.data()["msg_servers"]
    assert not row["stale"] and row["messages_per_s"] is None  # one report: no interval
    for _ in range(4):
        h.msg.stats.messages.inc("stored")
        h.msg.stats.store_latency.observe(0.004)
    h.tick()
    [row] = h.login.dashboard.data()["msg_servers"]
    assert row["messages_per_s"] == 4.0
    assert row["latency"]["store"] == {"p99_ms": 5.0, "count": 4, "over": False}
    h.tick()  # a quiet second: the figures are the interval's, not since start
    [row] = h.login.dashboard.data()["msg_servers"]
    assert row["messages_per_s"] == 0 and row["latency"]["store"] is None


def test_no_report_without_a_login_link_and_none_after_close(h: Harness) -> None:
    h.msg.start()
    h.tick()  # no live link: nothing to send, nothing fails
    h.msg.reporter.close()
    h.link()
    h.tick(3 * REPORT_INTERVAL_S)
    [row] = h.login.dashboard.data()["msg_servers"]
    assert row["reported_s_ago"] is None
