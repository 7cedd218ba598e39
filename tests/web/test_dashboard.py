"""login_server's dashboard end to end: real servers, SDK clients, Debian's Chromium.

A suite of two msg_servers carries traffic from SDK clients while Chromium shows
``/dashboard``; the page must show both msg_servers with their users and messages,
draw its charts, and mark a msg_server that stops as down. A lone login_server with a
msg_server played by a plain socket takes malformed requests to the new endpoints and
malformed stats reports on the registration link.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page
from servers.conftest import RunningSuite, free_ports, start_suite

from imreactor.config import dump
from imreactor.pdu.header import encode_pdu
from imreactor.pdu.proto import im_server_pb2 as server_pb
from imreactor.pdu.registry import ids_of
from imreactor.servers.suite import Child, start_child, stop_children

#: The first series colour of dashboard.js's palette (#1f77b4).
FIRST_SERIES_RGB = (0x1F, 0x77, 0xB4)

# Counts the pixels of one chart's canvas within a small distance of a colour: the
# series' line, not the axes or the grid (which are grey).
COUNT_PIXELS_JS = """([selector, [r, g, b]]) => {
  const canvas = document.querySelector(selector);
  if (!canvas) return -1;
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let n = 0;
  for (let i = 0; i < data.length; i += 4) {
    if (data[i + 3] > 200 && Math.abs(data[i] - r) + Math.abs(data[i + 1] - g)
        + Math.abs(data[i + 2] - b) < 60) n++;
  }
  return n;
}"""

# True when every msg_server named has a row that is up with users and messages/s > 0.
BUSY_ROWS_JS = """(ids) => ids.every((id) => {
  const row = document.querySelector(`#servers tr[data-id="${id}"]`);
  if (!row || row.className !== "up") return false;
  const value = (f) => Number(row.querySelector(`td[data-field="${f}"]`).textContent);
  return value("users") > 0 && value("messages") > 0;
})"""


def get(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as rsp:
            return rsp.status, dict(rsp.headers), rsp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


class Traffic:
    """Clients on both msg_servers sending each other messages until stopped."""

    def __init__(self, suite: RunningSuite) -> None:
        self.clients = [
            suite.login("alice", server=0),
            suite.login("bob", server=1),
            suite.login("carol", server=0),
            suite.login("dave", server=1),
        ]
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        alice, bob = self.clients[0], self.clients[1]
        while not self._stop.is_set():
            for sender, to in ((alice, bob), (bob, alice)):
                try:
                    sender.send_text(to.user_id, f"hello {self.sent}")
                    self.sent += 1
                except Exception:
                    # A server stopped by the test: the other one goes on.
                    pass
            self._stop.wait(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def test_the_page_shows_both_msg_servers_live_and_one_that_stops(
    tmp_path: Path, page: Page
) -> None:
    suite = start_suite(tmp_path / "suite", f"sqlite:///{tmp_path / 'im.db'}", msg_servers=2)
    traffic: Traffic | None = None
    try:
        traffic = Traffic(suite)
        ids = [f"127.0.0.1:{port}" for port in suite.layout.msg_ports]
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        response = page.goto(f"{suite.http_url}/dashboard")  # redirected to /dashboard/
        assert response is not None and response.status == 200
        assert page.url == f"{suite.http_url}/dashboard/"
        page.wait_for_function(BUSY_ROWS_JS, arg=ids, timeout=20_000)
        names = page.locator('#servers td[data-field="name"]').all_inner_texts()
        assert names == ["msg_server1", "msg_server2"]
        assert int(page.inner_text("#c-users")) >= 4
        assert float(page.inner_text("#c-messages")) > 0
        assert page.inner_text("#c-store").endswith(" ms")
        # The charts are drawn: a few points in, the first series' line is on the canvas.
        page.wait_for_function(
            f"() => ({COUNT_PIXELS_JS})(['#chart-messages canvas', {list(FIRST_SERIES_RGB)}]) > 20",
            timeout=10_000,
        )
        legend = page.locator("#chart-messages .u-legend").inner_text()
        assert "msg_server1" in legend and "msg_server2" in legend

        stop_children([suite.children.pop("msg_server2")])
        page.wait_for_function(
            """(id) => {
              const row = document.querySelector(`#servers tr[data-id="${id}"]`);
              return row && row.className === "down";
            }""",
            arg=ids[1],
            timeout=20_000,
        )
        assert page.inner_text("#c-servers") == "1 (1 down)"
        assert page.locator(f'#servers tr[data-id="{ids[0]}"]').get_attribute("class") == "up"
        assert errors == []
    finally:
        if traffic is not None:
            traffic.stop()
        suite.stop()


def test_the_json_names_every_figure_the_page_shows(tmp_path: Path) -> None:
    suite = start_suite(tmp_path / "suite", f"sqlite:///{tmp_path / 'im.db'}", msg_servers=2)
    traffic: Traffic | None = None
    try:
        traffic = Traffic(suite)
        deadline = time.monotonic() + 20
        while True:
            status, headers, body = get(f"{suite.http_url}/dashboard/data")
            assert status == 200 and headers["Content-Type"].startswith("application/json")
            doc = json.loads(body)
            rows = doc["msg_servers"]
            if len(rows) == 2 and all(r["messages_per_s"] for r in rows):
                break
            assert time.monotonic() < deadline, doc
            time.sleep(0.2)
        for row in rows:
            assert row["up"] and not row["stale"]
            assert row["sessions"] == 2 and row["max_sessions"] > 0
            assert row["users_online"] == 2 and row["connections"] == 2
            assert row["latency"]["loop_lag"]["p99_ms"] >= 0
        cluster = doc["cluster"]
        assert cluster["msg_servers"] == 2 and cluster["users_online"] == 4
        assert cluster["messages_per_s"] == pytest.approx(
            sum(r["messages_per_s"] for r in rows), abs=0.01
        )
        assert cluster["latency"]["store"]["count"] > 0
        assert get(f"{suite.http_url}/vendor/uPlot.iife.min.js")[0] == 200
    finally:
        if traffic is not None:
            traffic.stop()
        suite.stop()


# -- a lone login_server: malformed requests and malformed reports ------------------------


class LoneLogin:
    """A login_server process, and a socket playing a registered msg_server."""

    def __init__(self, tmp_path: Path) -> None:
        self.http, self.reg = free_ports(2)
        config = tmp_path / "login.toml"
        config.write_text(
            dump({"login": {"http_port": self.http, "msg_server_port": self.reg, "client_port": 0}})
        )
        self.log = tmp_path / "login_server.log"
        self.child: Child = start_child("login_server", "login-server", config, tmp_path)
        self.url = f"http://127.0.0.1:{self.http}"

    def register(self, port: int = 8000) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.reg), timeout=5)
        info = server_pb.IMMsgServInfo(
            ip1="10.0.0.1", ip2="10.0.0.1", port=port, max_conn_cnt=100, cur_conn_cnt=3,
            host_name="fake",
        )  # fmt: skip
        send(s, info)
        return s

    def data(self) -> dict[str, Any]:
        status, _, body = get(f"{self.url}/dashboard/data")
        assert status == 200
        doc: dict[str, Any] = json.loads(body)
        return doc

    def wait(self, what: str, predicate: Any) -> dict[str, Any]:
        deadline = time.monotonic() + 5
        while True:
            doc = self.data()
            if predicate(doc):
                return doc
            assert time.monotonic() < deadline, f"{what}: {doc}"
            time.sleep(0.05)


def send(s: socket.socket, message: Any) -> None:
    s.sendall(encode_pdu(*ids_of(message), 0, message.SerializeToString()))


def report(uptime_ms: int, messages: int, store_counts: list[int]) -> server_pb.IMMsgServStats:
    return server_pb.IMMsgServStats(
        uptime_ms=uptime_ms,
        connections=4,
        users_online=3,
        messages_stored=messages,
        deliveries=messages,
        latencies=[
            server_pb.IMMsgServStats.Latency(
                name="store", bounds_s=[0.001, 0.01, 0.1], counts=store_counts
            )
        ],
    )


@pytest.fixture
def lone(tmp_path: Path) -> Iterator[LoneLogin]:
    login = LoneLogin(tmp_path)
    yield login
    stop_children([login.child])


def test_malformed_stats_reports_are_dropped_and_the_link_stays(lone: LoneLogin) -> None:
    s = lone.register()
    send(s, report(1000, 10, [5, 5, 0, 0]))
    send(s, report(2000, 30, [5, 15, 0, 0]))
    first = lone.wait("two reports", lambda d: d["msg_servers"][0]["messages_per_s"] == 20)
    row = first["msg_servers"][0]
    assert row["latency"]["store"] == {"p99_ms": 10.0, "count": 10, "over": False}
    stats_ids = ids_of(server_pb.IMMsgServStats())
    bad = [
        encode_pdu(*stats_ids, 0, b"\xff\xff\xff"),  # undecodable
        encode_pdu(*stats_ids, 0, b""),  # every required field missing
        encode_pdu(*stats_ids, 0, report(3000, 40, [1, 2]).SerializeToString()),  # counts
        encode_pdu(*stats_ids, 0, report(1500, 40, [5, 15, 0, 0]).SerializeToString()),  # time
        encode_pdu(*stats_ids, 0, report(3000, 20, [5, 15, 0, 0]).SerializeToString()),  # back
    ]
    for frame in bad:
        s.sendall(frame)
    # Then a good one: the link still works, and the figures are those of 2 s → 3 s.
    send(s, report(3000, 35, [5, 15, 1, 0]))
    doc = lone.wait("the good report", lambda d: d["msg_servers"][0]["messages_per_s"] == 5)
    row = doc["msg_servers"][0]
    assert row["latency"]["store"] == {"p99_ms": 100.0, "count": 1, "over": False}
    assert row["up"] and row["sessions"] == 3
    log = lone.log.read_text()
    assert "undecodable IMMsgServStats" in log
    assert "IMMsgServStats lacks required fields" in log
    assert "malformed IMMsgServStats: histogram store: 2 counts for 3 bounds" in log
    assert "malformed IMMsgServStats: uptime 1.5 s, not after 2 s" in log
    assert "malformed IMMsgServStats: message or delivery counts went backwards" in log
    assert json.loads(get(f"{lone.url}/readyz")[2])["msg_servers"] == 1
    s.close()
    lone.wait("down", lambda d: d["msg_servers"][0]["up"] is False)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/dashboard/data", 405),
        ("DELETE", "/dashboard/data", 405),
        ("GET", "/dashboard/data?x=1", 400),
        ("GET", "/dashboard/data/more", 404),
        ("GET", "/dashboard/datas", 404),
        ("GET", "/dashboard/../server.py", 404),
        ("GET", "/dashboard/nope.js", 404),
        ("GET", "/dashboardx", 404),
        ("POST", "/dashboard/", 405),
        ("GET", "/vendor/../dashboard/index.html", 404),
    ],
)
def test_malformed_requests_to_the_dashboard_are_refused(
    lone: LoneLogin, method: str, path: str, status: int
) -> None:
    assert get(f"{lone.url}{path}", method)[0] == status
    assert get(f"{lone.url}/dashboard/data")[0] == 200  # and the next one is served


def test_the_dashboard_routes_answer(lone: LoneLogin) -> None:
    status, headers, _ = get(f"{lone.url}/dashboard")
    assert status == 200  # urllib follows the redirect to /dashboard/
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    for name in ("dashboard.js", "style.css"):
        assert get(f"{lone.url}/dashboard/{name}")[0] == 200
    doc = lone.data()
    assert doc["msg_servers"] == [] and doc["cluster"]["msg_servers"] == 0
    assert doc["cluster"]["latency"] == {} and doc["report_interval_s"] == 1.0
    with socket.create_connection(("127.0.0.1", lone.http), timeout=5) as s:
        s.sendall(b"GET /dashboard/data HTTP/1.1\r\nHost: x\r\n\x00\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 400 ")


def test_the_page_says_when_login_server_stops_answering(lone: LoneLogin, page: Page) -> None:
    page.goto(f"{lone.url}/dashboard/")
    page.wait_for_selector("#status.ok")
    assert page.is_visible("#empty")  # no msg_server yet
    s = lone.register()
    send(s, report(1000, 0, [0, 0, 0, 0]))
    page.wait_for_selector('#servers tr[data-id="10.0.0.1:8000"]')
    assert page.is_hidden("#empty")
    assert page.inner_text('#servers td[data-field="name"]') == "fake"
    stop_children([lone.child])
    page.wait_for_selector("#status.error")
    assert "login_server not answering" in page.inner_text("#status")
    s.close()
