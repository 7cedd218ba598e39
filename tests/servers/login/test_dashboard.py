"""login_server's dashboard (servers/login/dashboard.py), unit by unit: p99 from bucket
differences, rates between reports, the cluster's figures, malformed reports, the JSON.

The dashboard runs on a fake clock with a real registry; its links are ImConnections
connected in memory to silent peers.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from imreactor.http import Reply, Request
from imreactor.net import EventLoop
from imreactor.net.testing import FakeClock, transport_pair
from imreactor.pdu.imconn import Dispatcher, ImConnection, LinkPolicy
from imreactor.pdu.proto import im_server_pb2 as server_pb
from imreactor.servers.login.dashboard import (
    GONE_KEPT_S,
    STALE_AFTER_S,
    Dashboard,
    Interval,
    MalformedReport,
    Snapshot,
    cluster_figures,
    interval_between,
    interval_quantile,
)
from imreactor.servers.login.server import MsgServerRegistry
from imreactor.servers.metrics import bucket_quantile

BOUNDS = (0.001, 0.01, 0.1)
QUIET = LinkPolicy(heartbeat_s=None, timeout_s=None)
Stats = server_pb.IMMsgServStats


def stats(
    uptime_ms: int,
    messages: int = 0,
    store: tuple[int, ...] = (0, 0, 0, 0),
    errors: dict[str, int] | None = None,
    bounds: tuple[float, ...] = BOUNDS,
) -> Stats:
    return Stats(
        uptime_ms=uptime_ms,
        connections=2,
        users_online=2,
        messages_stored=messages,
        deliveries=2 * messages,
        latencies=[Stats.Latency(name="store", bounds_s=bounds, counts=store)],
        errors=[Stats.ErrorCount(kind=k, count=n) for k, n in (errors or {}).items()],
    )


# -- the math -----------------------------------------------------------------------------


def test_bucket_quantile_is_the_upper_bound_of_the_bucket_reaching_the_rank() -> None:
    assert bucket_quantile(BOUNDS, [0, 0, 0, 0], 0.99) == 0.0
    assert bucket_quantile(BOUNDS, [99, 1, 0, 0], 0.99) == 0.001  # 99 of 100 in the first
    assert bucket_quantile(BOUNDS, [98, 2, 0, 0], 0.99) == 0.01
    assert bucket_quantile(BOUNDS, [0, 0, 1, 0], 0.99) == 0.1
    assert bucket_quantile(BOUNDS, [50, 0, 0, 50], 0.99) == math.inf
    assert bucket_quantile(BOUNDS, [1, 0, 0, 0], 1.0) == 0.001


def test_p99_of_an_interval_comes_from_the_bucket_differences() -> None:
    # Since start, most observations were fast; in the last second all were slow.
    before = Snapshot.parse(stats(1000, 100, (1000, 0, 0, 0)))
    after = Snapshot.parse(stats(2000, 110, (1000, 0, 10, 0)))
    interval = interval_between(before, after)
    assert interval.latencies["store"] == (BOUNDS, (0, 0, 10, 0))
    assert interval_quantile(interval.latencies["store"]) == {
        "p99_ms": 100.0,
        "count": 10,
        "over": False,
    }
    # Over the whole run the p99 would have said 1 ms: that is not what the interval saw.
    assert bucket_quantile(BOUNDS, after.latencies["store"][1], 0.99) == 0.001


def test_a_quantile_past_the_last_bound_is_that_bound_marked_over() -> None:
    assert interval_quantile((BOUNDS, (0, 0, 0, 3))) == {"p99_ms": 100.0, "count": 3, "over": True}
    assert interval_quantile((BOUNDS, (0, 0, 0, 0))) is None


def test_rates_are_differences_over_the_uptime_between_reports() -> None:
    before = Snapshot.parse(stats(10_000, 100, errors={"pdu_refused": 1}))
    after = Snapshot.parse(stats(12_000, 150, errors={"pdu_refused": 5, "login_unavailable": 2}))
    interval = interval_between(before, after)
    assert interval.seconds == 2.0
    assert (interval.messages_per_s, interval.deliveries_per_s) == (25.0, 50.0)
    assert interval.errors == {"pdu_refused": 4, "login_unavailable": 2}
    assert interval.errors_per_s == 3.0


def test_a_histogram_whose_bounds_changed_is_left_out_of_the_interval() -> None:
    before = Snapshot.parse(stats(1000, bounds=(0.5, 1.0), store=(1, 0, 0)))
    after = Snapshot.parse(stats(2000, store=(0, 1, 0, 0)))
    assert interval_between(before, after).latencies == {}


def test_the_cluster_adds_buckets_before_taking_the_quantile() -> None:
    # One busy fast server and one quiet slow one: the cluster p99 is that of all
    # observations together (fast), not an average or a maximum of the two p99s.
    fast = Interval(1.0, 990, 990, {}, {"store": (BOUNDS, (990, 0, 0, 0))})
    slow = Interval(1.0, 10, 10, {"x": 2}, {"store": (BOUNDS, (0, 0, 10, 0))})
    figures = cluster_figures([fast, slow])
    assert figures["messages_per_s"] == 1000.0 and figures["errors_per_s"] == 2.0
    assert figures["latency"]["store"] == {"p99_ms": 1.0, "count": 1000, "over": False}
    # 2 % slow: now the p99 is in the slow bucket.
    slower = Interval(1.0, 20, 20, {}, {"store": (BOUNDS, (0, 0, 20, 0))})
    assert cluster_figures([fast, slower])["latency"]["store"]["p99_ms"] == 100.0
    assert cluster_figures([]) == {
        "messages_per_s": 0,
        "deliveries_per_s": 0,
        "errors_per_s": 0,
        "latency": {},
    }


def test_servers_with_other_bounds_are_not_added_to_unlike_buckets() -> None:
    a = Interval(1.0, 0, 0, {}, {"store": (BOUNDS, (0, 5, 0, 0))})
    b = Interval(1.0, 0, 0, {}, {"store": ((0.5, 1.0), (1, 0, 0))})
    assert cluster_figures([a, b])["latency"]["store"] == {
        "p99_ms": 10.0,
        "count": 5,
        "over": False,
    }


# -- malformed reports --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("report", "reason"),
    [
        (stats(1, store=(1, 2)), "2 counts for 3 bounds"),
        (stats(1, bounds=(), store=(1,)), "0 bounds"),
        (stats(1, bounds=(0.1, 0.1, 0.2)), "not positive and increasing"),
        (stats(1, bounds=(0.0, 0.1, 0.2)), "not positive and increasing"),
        (stats(1, bounds=(0.1, math.nan, 0.2)), "not positive and increasing"),
        (stats(1, bounds=(0.1, 0.2, math.inf)), "not positive and increasing"),
        (stats(1, bounds=tuple(range(1, 66)), store=(0,) * 66), "65 bounds"),
        (stats(1, errors={"Bad Kind": 1}), "is not [a-z]"),
        (stats(1, errors={"x" * 49: 1}), "is not [a-z]"),
        (Stats(uptime_ms=1, connections=0, users_online=0, messages_stored=0, deliveries=0,
               latencies=[Stats.Latency(name="a", bounds_s=[1], counts=[0, 0])] * 2),
         "histogram a twice"),
        (Stats(uptime_ms=1, connections=0, users_online=0, messages_stored=0, deliveries=0,
               errors=[Stats.ErrorCount(kind=f"k{i}", count=0) for i in range(65)]),
         "65 error kinds"),
    ],
)  # fmt: skip
def test_a_malformed_report_is_refused_with_the_reason(report: Stats, reason: str) -> None:
    with pytest.raises(MalformedReport, match=reason.replace("[", r"\[")):
        Snapshot.parse(report)


@pytest.mark.parametrize(
    ("after", "reason"),
    [
        (stats(1000, 10), "not after"),
        (stats(900, 10), "not after"),
        (stats(2000, 9), "went backwards"),
        (stats(2000, 10, errors={"e": 0}), "error count e went backwards"),
        (stats(2000, 10, store=(0, 0, 0, 0)), "histogram store went backwards"),
    ],
)
def test_a_report_that_goes_back_in_time_or_counts_is_refused(after: Stats, reason: str) -> None:
    before = Snapshot.parse(stats(1000, 10, store=(1, 0, 0, 0), errors={"e": 1}))
    with pytest.raises(MalformedReport, match=reason):
        interval_between(before, Snapshot.parse(after))


# -- the dashboard ------------------------------------------------------------------------


class Harness:
    def __init__(self) -> None:
        self.clock = FakeClock(50.0)
        self.loop = EventLoop(clock=self.clock)
        self.registry = MsgServerRegistry()
        self.dashboard = Dashboard(self.registry, self.loop.time)

    def link(self, name: str, port: int, sessions: int = 1) -> ImConnection:
        link = self.connected()
        info = server_pb.IMMsgServInfo(
            ip1="10.0.0.1", ip2="", port=port, max_conn_cnt=10, cur_conn_cnt=sessions,
            host_name=name,
        )  # fmt: skip
        self.registry.register(link, info)
        return link

    def connected(self) -> ImConnection:
        """A link connected in memory to a peer that says nothing."""
        link = ImConnection(Dispatcher[ImConnection](), None, QUIET)
        transport_pair(self.loop, link, ImConnection(Dispatcher[ImConnection](), None, QUIET))
        return link

    def report(self, link: ImConnection, report: Stats) -> None:
        self.dashboard.on_stats(link, report, 0)

    def rows(self) -> dict[str, dict[str, Any]]:
        return {row["id"]: row for row in self.dashboard.data()["msg_servers"]}


def test_the_data_has_one_row_per_msg_server_and_the_cluster_sums() -> None:
    h = Harness()
    a, b = h.link("a", 8001, sessions=3), h.link("b", 8002, sessions=1)
    for link, messages in ((a, 30), (b, 10)):
        h.report(link, stats(1000))
        h.report(link, stats(2000, messages, store=(messages, 0, 0, 0)))
    doc = h.dashboard.data()
    rows = {row["name"]: row for row in doc["msg_servers"]}
    assert rows["a"]["id"] == "10.0.0.1:8001"
    assert rows["a"]["messages_per_s"] == 30 and rows["b"]["deliveries_per_s"] == 20
    assert rows["a"]["load"] == 0.3 and rows["a"]["users_online"] == 2
    cluster = doc["cluster"]
    assert (cluster["msg_servers"], cluster["sessions"], cluster["max_sessions"]) == (2, 4, 20)
    assert cluster["users_online"] == 4 and cluster["messages_per_s"] == 40
    assert cluster["latency"]["store"]["count"] == 40
    json.dumps(doc, allow_nan=False)  # plain JSON: no NaN or Infinity anywhere


def test_a_silent_msg_server_is_stale_and_leaves_the_cluster_rates() -> None:
    h = Harness()
    link = h.link("a", 8001)
    h.report(link, stats(1000))
    h.report(link, stats(2000, 5))
    h.clock.advance(STALE_AFTER_S + 0.5)
    [row] = h.rows().values()
    assert row["stale"] and row["messages_per_s"] is None and row["users_online"] == 2
    assert h.dashboard.data()["cluster"]["messages_per_s"] == 0


def test_a_msg_server_that_goes_is_down_for_a_while_then_left_out() -> None:
    h = Harness()
    link = h.link("a", 8001)
    h.report(link, stats(1000))
    h.dashboard.forget(link)
    h.registry.forget(link)
    h.clock.advance(5)
    assert h.rows() == {"10.0.0.1:8001": {"id": "10.0.0.1:8001", "name": "a", "up": False,
                                          "down_s": 5.0}}  # fmt: skip
    assert h.dashboard.data()["cluster"]["msg_servers_down"] == 1
    h.link("a", 8001)  # back: up again, once
    assert [row["up"] for row in h.rows().values()] == [True]
    h.dashboard.forget(link)  # a link already forgotten changes nothing
    h.clock.advance(GONE_KEPT_S + 1)
    assert len(h.rows()) == 1


def test_a_malformed_report_changes_nothing_and_the_next_good_one_counts() -> None:
    h = Harness()
    link = h.link("a", 8001)
    h.report(link, stats(1000, 10))
    h.report(link, stats(2000, 20))
    h.report(link, stats(3000, 5))  # counts went backwards: refused
    h.report(link, stats(3000, 30, store=(1, 2)))  # counts do not fit the bounds
    assert link.bad_pdus == 2
    assert h.rows()["10.0.0.1:8001"]["messages_per_s"] == 10
    h.report(link, stats(4000, 50))
    assert h.rows()["10.0.0.1:8001"]["messages_per_s"] == 15  # 30 since the 2 s report
    assert link.bad_pdus == 2


def test_a_report_from_a_link_that_never_registered_is_not_shown() -> None:
    h = Harness()
    stranger = h.connected()
    h.report(stranger, stats(1000))
    assert h.rows() == {}


def request(method: str, path: str, query: str = "") -> Reply:
    h = Harness()
    router_answer = h.dashboard._http_data(Request(method, path, query, {}))
    return router_answer if isinstance(router_answer, Reply) else Reply(*router_answer)


def test_the_data_endpoint_answers_get_and_refuses_the_rest() -> None:
    ok = request("GET", "/dashboard/data")
    assert ok.status == 200 and ok.headers["Cache-Control"] == "no-store"
    assert json.loads(ok.body)["msg_servers"] == []
    assert request("HEAD", "/dashboard/data").status == 200
    assert request("POST", "/dashboard/data").status == 405
    assert request("GET", "/dashboard/data", "since=1").status == 400
    assert request("GET", "/dashboard/data/x").status == 404
