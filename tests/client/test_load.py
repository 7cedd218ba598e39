"""The load generator: clean runs against a real suite, and its verifier against faults.

A real suite (server processes on SQLite) must verify clean, from the API and
from the command line, for 1:1 and group messages; so must a cluster of two
msg_servers and a route_server with every pair of users split across the two.
A deliberately faulty stand-in msg_server (acks every message, then drops,
duplicates, reorders, renumbers or misroutes exactly one delivery, or delivers
one group message twice to one member, or withholds one ack, or refuses one
login, or creates the group without one member) must make the verifier report
exactly that fault and the command exit non-zero.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from servers.conftest import RunningSuite, free_ports

from imreactor.accounts import create_users
from imreactor.cli import main as cli_main
from imreactor.client.load import LoadOptions, LoadReport, run_load
from imreactor.http import HttpProtocol, Router
from imreactor.net import EventLoop, Server
from imreactor.pdu.imconn import Dispatcher, ImConnection, LinkPolicy
from imreactor.pdu.proto import im_base_define_pb2 as base
from imreactor.pdu.proto import im_group_pb2 as group_pb
from imreactor.pdu.proto import im_login_pb2 as login_pb
from imreactor.pdu.proto import im_message_pb2 as msg_pb
from imreactor.servers.echo import EchoProtocol
from imreactor.servers.suite import SuiteLayout
from imreactor.storage import open_storage

PASSWORD = "imreactor"
#: Users load0..load<LOAD_USERS-1> exist in the real suites.
LOAD_USERS = 12
#: No per-connection rate limit in the way of the loads.
UNLIMITED = {"msg": {"msg_rate_per_s": 100000.0, "msg_burst": 100000}}
#: msg_server's side of a client link, as the fake server below plays it.
SERVER_SIDE = LinkPolicy(heartbeat_s=None, timeout_s=120.0, echo_heartbeat=True)


def clean(report: LoadReport, **expected: int) -> bool:
    """True if every error counter is 0 except those in ``expected``, which match."""
    return all(report.errors[k] == expected.get(k, 0) for k in report.errors)


# -- a real suite ------------------------------------------------------------------------------


def start_suite(layout: SuiteLayout) -> Iterator[RunningSuite]:
    """Create users load0..load<LOAD_USERS-1>, start the suite, stop it when done."""
    layout.data_dir.mkdir(parents=True, exist_ok=True)
    create_users(layout.database_url, [f"load{i}" for i in range(LOAD_USERS)], PASSWORD)
    running = RunningSuite(layout)
    try:
        running.start()
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def load_suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSuite]:
    """One SQLite suite with one msg_server (with a WebSocket port) for the module."""
    http, login, msg, db, msfs, ws = free_ports(6)
    yield from start_suite(
        SuiteLayout(
            data_dir=tmp_path_factory.mktemp("suite"),
            http_port=http,
            login_port=login,
            msg_ports=[msg],
            db_port=db,
            msfs_port=msfs,
            ws_ports=[ws],
            overrides=UNLIMITED,
        )
    )


def start_cluster(data_dir: Path) -> Iterator[RunningSuite]:
    """:func:`start_suite` with two msg_servers and a route_server."""
    http, login, db, route, msg1, msg2, msfs = free_ports(7)
    yield from start_suite(
        SuiteLayout(
            data_dir=data_dir,
            http_port=http,
            login_port=login,
            msg_ports=[msg1, msg2],
            db_port=db,
            route_ports=[route],
            msfs_port=msfs,
            overrides=UNLIMITED,
        )
    )


@pytest.fixture(scope="module")
def load_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSuite]:
    """One SQLite suite with two msg_servers and a route_server for the module."""
    yield from start_cluster(tmp_path_factory.mktemp("cluster"))


def msg_servers(suite: RunningSuite) -> list[str]:
    return [f"127.0.0.1:{port}" for port in suite.layout.msg_ports]


def logged_in_at(suite: RunningSuite) -> dict[str, set[int]]:
    """msg_server name → ids of the users its log says logged in there."""
    names = [f"msg_server{i}" for i in range(1, len(suite.layout.msg_ports) + 1)]
    return {
        name: {int(m) for m in re.findall(r"user (\d+) logged in", suite.log_text(name))}
        for name in names
    }


def user_ids(suite: RunningSuite, names: list[str]) -> list[int]:
    store = open_storage(suite.layout.database_url)
    try:
        found = [store.user_by_name(name) for name in names]
    finally:
        store.close()
    assert all(found)
    return [user.user_id for user in found if user is not None]


def test_real_suite_run_verifies_clean(load_suite: RunningSuite) -> None:
    # Two devices per user: the recipient's two connections and the sender's mobile
    # connection must each get every message once, in order.
    report = run_load(
        LoadOptions(login_url=load_suite.http_url, users=8, devices=2, in_flight=4, count=400)
    )
    assert report.ok, report.text()
    assert (report.logins_ok, report.sent, report.acked) == (16, 400, 400)
    assert report.expected_deliveries == report.deliveries == 400 * 3
    assert report.msgs_per_s > 0 and report.ack_latency.p99_ms is not None
    assert report.delivery_latency.count == 1200


def test_real_group_run_verifies_clean(load_suite: RunningSuite) -> None:
    # Ten members with two devices each, two of them sending: every message must reach
    # the 19 other connections (the senders' phones included) once, in msg_id order.
    report = run_load(
        LoadOptions(
            msg_server=msg_servers(load_suite)[0],
            group_size=10,
            senders=2,
            devices=2,
            in_flight=4,
            count=400,
        )
    )
    assert report.ok, report.text()
    assert (report.users, report.group_size, report.senders, report.acked) == (10, 10, 2, 400)
    assert report.group_id > 0
    assert report.expected_deliveries == report.deliveries == 400 * 19
    assert report.deliveries_per_s > report.msgs_per_s > 0


def test_cluster_one_to_one_across_servers_verifies_clean(load_cluster: RunningSuite) -> None:
    # Both devices of a user log in on its server; each pair's users are on different
    # servers, so every message and every copy to the recipient crosses route_server.
    report = run_load(
        LoadOptions(
            msg_servers=msg_servers(load_cluster), users=8, devices=2, in_flight=4, count=400
        )
    )
    assert report.ok, report.text()
    assert report.expected_deliveries == report.deliveries == 400 * 3
    where = logged_in_at(load_cluster)
    ids = user_ids(load_cluster, [f"load{i}" for i in range(8)])
    assert set(ids[0::2]) <= where["msg_server1"] and set(ids[1::2]) <= where["msg_server2"]
    assert not set(ids[0::2]) & where["msg_server2"], "a pair was not split"
    assert not set(ids[1::2]) & where["msg_server1"], "a pair was not split"


def test_cluster_group_across_servers_verifies_clean(load_cluster: RunningSuite) -> None:
    # Members alternate between the two servers; the sender's phone is on its server,
    # every other member's connections get the message through both paths.
    report = run_load(
        LoadOptions(
            msg_servers=msg_servers(load_cluster),
            group_size=LOAD_USERS,
            devices=2,
            in_flight=8,
            count=300,
        )
    )
    assert report.ok, report.text()
    assert report.senders == 1 and report.acked == 300
    assert report.expected_deliveries == report.deliveries == 300 * (2 * LOAD_USERS - 1)


def test_websocket_run_verifies_clean(load_suite: RunningSuite) -> None:
    # Through login_server's wsURL, two devices per user, as the TCP run above.
    report = run_load(
        LoadOptions(
            login_url=load_suite.http_url, ws=True, users=8, devices=2, in_flight=4, count=400
        )
    )
    assert report.ok, report.text()
    assert report.target == f"{load_suite.http_url} over WebSocket"
    assert (report.logins_ok, report.acked, report.deliveries) == (16, 400, 400 * 3)


def test_cli_group_run_pinned_to_the_websocket_port(load_suite: RunningSuite) -> None:
    # The pinned address is the ws_port, where a TCP client would not get past the upgrade.
    (ws_port,) = load_suite.layout.ws_ports
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "imreactor", "load", "--ws", "--json", "--no-progress"),
            *("--msg-server", f"127.0.0.1:{ws_port}", "--group-size", "4", "--senders", "2"),
            *("--count", "80", "--in-flight", "2"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] and report["acked"] == 80 and report["deliveries"] == 80 * 3


def test_websocket_run_without_a_ws_port_fails_with_why(load_cluster: RunningSuite) -> None:
    report = run_load(
        LoadOptions(login_url=load_cluster.http_url, ws=True, users=2, count=1, login_retry_s=2)
    )
    assert not report.ok and report.errors["login_failures"] == 2
    assert any("without wsURL" in problem for problem in report.problems), report.problems


def test_cli_creates_users_and_prints_json(load_suite: RunningSuite) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "imreactor",
            "load",
            "--login-url",
            load_suite.http_url,
            "--create-users",
            "--database",
            load_suite.layout.database_url,
            "--user-prefix",
            "cli",
            "--users",
            "4",
            "--count",
            "60",
            "--in-flight",
            "2",
            "--duplex",
            "--json",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "created 4 users" in proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] and report["acked"] == 60 and report["senders"] == 4
    assert report["deliveries"] == 60


def test_wrong_password_is_a_refused_login_and_fails(load_suite: RunningSuite) -> None:
    report = run_load(
        LoadOptions(
            login_url=load_suite.http_url, users=2, password="wrong", count=1, login_retry_s=2
        )
    )
    assert not report.ok
    assert clean(report, refused_logins=2)
    assert report.logins_ok == 0 and report.sent == 0


# -- a faulty stand-in msg_server ----------------------------------------------------------------

#: The id of the fake's group.
GROUP_ID = 77


class FakeConn(ImConnection):
    """The fake's side of one client connection: who logged in on it."""

    __slots__ = ("user_id",)

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.user_id = 0


class FakeMsgServer:
    """A msg_server stand-in with one injected fault, plus login_server's HTTP answer.

    Logs anyone in (user id = 1000 + the number at the end of the name; ``refuse``
    names a user refused with 6), creates group ``GROUP_ID`` of the creator and the
    members asked for, acks every ``IMMsgData`` with a msg_id per conversation
    counting from 1, and delivers it to every connection of the recipient and the
    sender but the sending one (of every member, for a group message). The
    ``fault_at``-th message (from 1) meets ``fault``:

    - ``drop``: acked, never delivered;     - ``duplicate``: delivered twice;
    - ``reorder``: delivered after the next message;
    - ``wrong_id``: delivered with another msg_id than acked;
    - ``misroute``: also delivered to user 1002 (a bystander);
    - ``no_ack``: delivered, never acked;
    - ``close``: the sender's connection is closed instead of an answer;
    - ``twice_to_one``: delivered twice to one connection (the last one it goes to).

    ``fault="lose_member"`` instead creates the group without its last member.

    Runs its own loop on a thread; :meth:`close` stops it.
    """

    def __init__(
        self, fault: str | None = None, fault_at: int = 5, refuse: str | None = None
    ) -> None:
        self.fault = fault
        self.fault_at = fault_at
        self.refuse = refuse
        self.messages = 0
        self.conns: dict[int, list[ImConnection]] = {}
        self.next_id: dict[tuple[int, int], int] = {}
        self.members: list[int] = []
        self.held: tuple[ImConnection, Any] | None = None
        self.loop = EventLoop()
        d = Dispatcher[ImConnection](default=lambda conn, msg, seq: None)
        d.register(login_pb.IMLoginReq, self._login)
        d.register(msg_pb.IMMsgData, self._msg)
        d.register(group_pb.IMGroupCreateReq, self._group_create)
        self.dispatch = d
        self.server: Server = self.loop.listen("127.0.0.1", 0, self._conn)
        router = Router()
        router.add("/msg_server", self._where)
        self.http: Server = self.loop.listen("127.0.0.1", 0, lambda: HttpProtocol(router))
        self.echo: Server = self.loop.listen("127.0.0.1", 0, EchoProtocol)
        self.thread = threading.Thread(target=self.loop.run, daemon=True)
        self.thread.start()

    @property
    def login_url(self) -> str:
        return f"http://127.0.0.1:{self.http.port}"

    def _where(self, request: Any) -> tuple[int, str, bytes]:
        answer = {"code": 0, "msg": "", "priorIP": "127.0.0.1", "port": str(self.server.port)}
        return 200, "application/json", json.dumps(answer).encode()

    def _conn(self) -> ImConnection:
        return FakeConn(self.dispatch, None, SERVER_SIDE)

    def _login(self, conn: ImConnection, req: Any, seq: int) -> None:
        assert isinstance(conn, FakeConn)
        ok = req.user_name != self.refuse
        user_id = 1000 + int(req.user_name.lstrip("abcdefghijklmnopqrstuvwxyz"))
        res = login_pb.IMLoginRes(
            server_time=1,
            result_code=base.REFUSE_REASON_NONE if ok else base.REFUSE_REASON_DB_VALIDATE_FAILED,
        )
        if ok:
            res.user_info.CopyFrom(
                base.UserInfo(
                    user_id=user_id,
                    user_gender=0,
                    user_nick_name=req.user_name,
                    avatar_url="",
                    department_id=0,
                    email="",
                    user_real_name="",
                    user_tel="",
                    user_domain="",
                    status=1,
                )
            )
            conn.user_id = user_id
            self.conns.setdefault(user_id, []).append(conn)
        conn.send(res, seq)

    def _group_create(self, conn: ImConnection, req: Any, seq: int) -> None:
        assert isinstance(conn, FakeConn)
        creator: int = conn.user_id
        self.members = [creator, *(m for m in req.member_id_list if m != creator)]
        if self.fault == "lose_member":
            self.members.pop()
        rsp = group_pb.IMGroupCreateRsp(
            user_id=creator,
            result_code=0,
            group_id=GROUP_ID,
            group_name=req.group_name,
            user_id_list=self.members,
        )
        conn.send(rsp, seq)

    def _msg(self, conn: ImConnection, msg: Any, seq: int) -> None:
        assert isinstance(conn, FakeConn)
        self.messages += 1
        faulty = self.messages == self.fault_at
        if faulty and self.fault == "close":
            conn.conn.abort()
            return
        sender: int = conn.user_id
        peer = msg.to_session_id
        group = msg.msg_type == base.MSG_TYPE_GROUP_TEXT
        conv = (0, peer) if group else (min(sender, peer), max(sender, peer))
        msg_id = self.next_id[conv] = self.next_id.get(conv, 0) + 1
        if not (faulty and self.fault == "no_ack"):
            ack = msg_pb.IMMsgDataAck(
                user_id=sender,
                session_id=peer,
                msg_id=msg_id,
                session_type=base.SESSION_TYPE_GROUP if group else base.SESSION_TYPE_SINGLE,
            )
            conn.send(ack, seq)
        msg.from_user_id, msg.msg_id = sender, msg_id
        receivers = self.members if group else [peer, sender]
        targets = [c for uid in receivers for c in self.conns.get(uid, []) if c is not conn]
        copies = 1
        if faulty:
            if self.fault == "drop":
                copies = 0
            elif self.fault == "duplicate":
                copies = 2
            elif self.fault == "wrong_id":
                msg.msg_id = msg_id + 1000
            elif self.fault == "misroute":
                targets += self.conns.get(1002, [])
            elif self.fault == "twice_to_one":
                targets.append(targets[-1])
        for target in targets:
            if faulty and self.fault == "reorder":
                self.held = (target, msg)
                continue
            for _ in range(copies):
                target.send(msg)
            if self.held is not None and self.held[0] is target and not faulty:
                target.send(self.held[1])
                self.held = None

    def close(self) -> None:
        def stop() -> None:
            for server in (self.server, self.http, self.echo):
                server.close()
            for conns in self.conns.values():
                for conn in conns:
                    conn.conn.abort()
            self.loop.stop()

        self.loop.call_soon_threadsafe(stop)
        self.thread.join(5)
        self.loop.close()


FakeFactory = Callable[..., FakeMsgServer]


@pytest.fixture
def fake() -> Iterator[FakeFactory]:
    made: list[FakeMsgServer] = []

    def make(**kw: Any) -> FakeMsgServer:
        made.append(FakeMsgServer(**kw))
        return made[-1]

    yield make
    for server in made:
        server.close()


def test_fault_free_fake_verifies_clean(fake: FakeFactory) -> None:
    """The control for the fault tests: without a fault the same run is clean."""
    server = fake()
    report = run_load(LoadOptions(login_url=server.login_url, users=4, pairs=1, count=20))
    assert report.ok, report.text()
    assert (report.acked, report.deliveries, report.expected_deliveries) == (20, 20, 20)


@pytest.mark.parametrize(
    "fault,fault_at,expected",
    [
        ("drop", 5, {"losses": 1}),
        ("duplicate", 5, {"duplicates": 1}),
        ("reorder", 5, {"reorders": 1}),
        ("wrong_id", 20, {"wrong_ids": 1}),  # the last message: no later one to misorder
        ("misroute", 5, {"misdelivered": 1}),
        ("no_ack", 5, {"timeouts": 1}),
        # The only sender is gone: the run must end, not wait for it.
        ("close", 5, {"unacked_on_close": 1, "disconnects": 1}),
    ],
)
def test_verifier_catches_the_injected_fault(
    fake: FakeFactory, fault: str, fault_at: int, expected: dict[str, int]
) -> None:
    server = fake(fault=fault, fault_at=fault_at)
    report = run_load(
        LoadOptions(
            login_url=server.login_url,
            users=4,
            pairs=1,
            count=20,
            ack_timeout_s=0.5,
            drain_s=0.5,
        )
    )
    assert not report.ok
    assert clean(report, **expected), report.text()
    assert report.problems, "the fault is described"


@pytest.mark.parametrize(
    "fault,expected",
    [
        (None, {}),  # the control: the same run is clean without a fault
        ("twice_to_one", {"duplicates": 1}),
        ("drop", {"losses": 7}),  # every other connection of the group misses it
        ("lose_member", {"group_failures": 1}),
    ],
)
def test_verifier_checks_group_fan_out(
    fake: FakeFactory, fault: str | None, expected: dict[str, int]
) -> None:
    server = fake(fault=fault, fault_at=5)
    report = run_load(
        LoadOptions(
            login_url=server.login_url,
            group_size=4,
            senders=2,
            devices=2,
            count=20,
            ack_timeout_s=0.5,
            drain_s=0.5,
        )
    )
    assert clean(report, **expected), report.text()
    if fault is None:
        assert report.ok and report.group_id == GROUP_ID
        assert report.expected_deliveries == report.deliveries == 20 * 7
    else:
        assert not report.ok and report.problems


def test_refused_login_fails_the_run_but_other_pairs_still_run(fake: FakeFactory) -> None:
    server = fake(refuse="load1")
    report = run_load(LoadOptions(login_url=server.login_url, users=4, count=10))
    assert not report.ok
    assert clean(report, refused_logins=1)
    assert report.senders == 1 and report.acked == 10


def test_cli_exits_non_zero_on_a_lost_message(
    fake: FakeFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    server = fake(fault="drop", fault_at=3)
    argv = ["load", "--msg-server", f"127.0.0.1:{server.server.port}", "--users", "2"]
    code = cli_main([*argv, "--count", "10", "--drain", "0.5", "--json", "--no-progress"])
    assert code == 1
    report = json.loads(capsys.readouterr().out)
    assert report["errors"]["losses"] == 1 and not report["ok"]
    assert cli_main([*argv, "--count", "10", "--no-progress"]) == 0  # the fault was one-off


def test_cli_group_run_on_pinned_servers(
    fake: FakeFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    server = fake(fault="twice_to_one", fault_at=4)
    where = f"127.0.0.1:{server.server.port}"
    argv = ["load", "--msg-servers", f"{where},{where}", "--group-size", "3", "--senders", "2"]
    code = cli_main([*argv, "--count", "10", "--drain", "0.5", "--json", "--no-progress"])
    assert code == 1
    report = json.loads(capsys.readouterr().out)
    assert report["errors"]["duplicates"] == 1 and report["group_id"] == GROUP_ID
    assert report["target"].startswith(f"msg_servers {where},{where}")
    assert cli_main([*argv, "--count", "10", "--no-progress"]) == 0  # the fault was one-off


def test_rate_paces_the_senders(fake: FakeFactory) -> None:
    server = fake()
    report = run_load(
        LoadOptions(login_url=server.login_url, users=4, in_flight=8, rate=100.0, count=50)
    )
    assert report.ok, report.text()
    # 50 messages at 100/s: about half a second (one tick of banked credit at most).
    assert 0.4 <= report.send_s < 2.0
    assert report.msgs_per_s <= 130


def test_duration_bounds_the_run(fake: FakeFactory) -> None:
    server = fake()
    report = run_load(
        LoadOptions(login_url=server.login_url, users=4, in_flight=2, duplex=True, duration_s=0.3)
    )
    assert report.ok, report.text()
    assert report.senders == 4 and report.acked == report.sent > 0
    assert 0.25 <= report.send_s < 1.5


def test_echo_reference_run(fake: FakeFactory) -> None:
    server = fake()
    report = run_load(
        LoadOptions(echo=f"127.0.0.1:{server.echo.port}", users=6, in_flight=4, count=300)
    )
    assert report.ok, report.text()
    assert report.mode == "echo" and report.connections == 6 and report.senders == 3
    assert report.acked == 300 and report.expected_deliveries == 0


def test_impossible_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        run_load(LoadOptions(users=4, pairs=3))
    for options in (
        LoadOptions(group_size=4, senders=5),
        LoadOptions(group_size=1),
        LoadOptions(group_size=4, pairs=1),
        LoadOptions(senders=2),
        LoadOptions(msg_servers=[]),
        LoadOptions(msg_servers=["127.0.0.1:x"]),
        LoadOptions(source_host="not an address"),
        LoadOptions(reconnect=True, group_size=4),
        LoadOptions(reconnect_jitter_s=-1.0),
        LoadOptions(first_user=3),
        LoadOptions(echo="127.0.0.1:7000", ws=True),
    ):
        with pytest.raises(ValueError):
            options.check()
    assert cli_main(["load", "--users", "1", "--no-progress"]) == 2
    assert cli_main(["load", "--group-size", "3", "--duplex", "--no-progress"]) == 2
