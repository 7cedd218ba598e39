"""msg_server end to end: real server processes, real sockets, SQLite and PostgreSQL.

Login (ok, bad password, unknown user, duplicate kick), login deadline and
commands before login, heartbeat timeout, 1:1 delivery online and offline with
catch-up through unread counts and history, read acks, contiguous ids under
concurrent senders, bad input from one client not noticed by others, rate limit.
"""

from __future__ import annotations

import queue
import resource
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from imreactor.client import Client
from imreactor.pdu.header import HEADER_LEN, encode_pdu, parse_header
from imreactor.pdu.imconn import encode_message
from imreactor.pdu.password import password_digest
from imreactor.pdu.proto import im_base_define_pb2 as base
from imreactor.pdu.proto import im_buddy_pb2 as buddy
from imreactor.pdu.proto import im_login_pb2 as login_pb
from imreactor.pdu.proto import im_message_pb2 as msg_pb
from imreactor.servers.msg.server import FD_RESERVE, connection_capacity
from imreactor.servers.suite import DEMO_PASSWORD

from .conftest import RunningSuite, SuiteFactory


def test_login_ok_returns_user_info(suite: RunningSuite) -> None:
    alice = suite.login("alice")
    assert alice.user_id > 0
    assert alice.user_info.user_nick_name == "Alice"


@pytest.mark.parametrize("name,password", [("alice", "wrong"), ("nobody", "imreactor")])
def test_login_refused_with_6_and_closed(suite: RunningSuite, name: str, password: str) -> None:
    suite.login("bob")  # waits until msg_server is linked
    c = suite.client()
    res = c.login(name, password, check=False)
    assert res.result_code == base.REFUSE_REASON_DB_VALIDATE_FAILED
    assert c.wait_closed(5)


def test_a_full_server_refuses_logins_at_once_and_takes_them_again_when_freed(
    make_suite: SuiteFactory,
) -> None:
    suite = make_suite({"msg": {"max_conn_cnt": 2}})
    alice = suite.login("alice")
    suite.login("bob")
    c = suite.client()
    res = c.login("carol", DEMO_PASSWORD, check=False)
    assert res.result_code == base.REFUSE_REASON_MSG_SERVER_FULL
    assert c.wait_closed(5)
    assert "login refused (2 server full)" in suite.log_text("msg_server")
    alice.close()
    suite.login("carol")  # a place is free again


def test_capacity_is_what_the_open_file_limit_leaves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resource, "getrlimit", lambda _: (20_000, 20_000))
    assert connection_capacity(100_000) == 20_000 - FD_RESERVE
    assert connection_capacity(500) == 500
    monkeypatch.setattr(resource, "getrlimit", lambda _: (10, 10))
    assert connection_capacity(100_000) == 1  # never nothing: the limit is logged instead
    monkeypatch.setattr(resource, "getrlimit", lambda _: (resource.RLIM_INFINITY,) * 2)
    assert connection_capacity(100_000) == 100_000


def test_duplicate_login_kicks_the_older_connection_of_the_same_class(
    suite: RunningSuite,
) -> None:
    first = suite.login("alice")
    mobile = suite.login("alice", client_type=base.CLIENT_TYPE_ANDROID)
    second = suite.login("alice")
    kick = first.wait_for(login_pb.IMKickUser, 5)
    assert kick.kick_reason == base.KICK_REASON_DUPLICATE_USER
    assert first.wait_closed(5)
    # The mobile connection is another class: it stays, and so does the new desktop one.
    assert mobile.is_connected and second.is_connected
    assert second.request(msg_pb.IMClientTimeReq(), msg_pb.IMClientTimeRsp).server_time > 0


def test_commands_before_login_close_the_connection(suite: RunningSuite) -> None:
    bystander = suite.login("bob")
    c = suite.client()
    c.send(msg_pb.IMUnreadMsgCntReq(user_id=1))
    assert c.wait_closed(5)
    assert "before login" in suite.log_text("msg_server")
    # Nobody else noticed.
    assert bystander.request(msg_pb.IMClientTimeReq(), msg_pb.IMClientTimeRsp).server_time > 0


def test_garbage_closes_only_that_connection(suite: RunningSuite) -> None:
    alice, bob = suite.login("alice"), suite.login("bob")
    bad = suite.login("carol")
    bad.send_raw(b"\x00\x00\x00\x05garbage that is not a PDU")
    assert bad.wait_closed(5)
    ack = alice.send_text(bob.user_id, "still here")
    got = bob.wait_for(msg_pb.IMMsgData, 5)
    assert (got.msg_id, got.msg_data) == (ack.msg_id, b"still here")


def test_oversized_pdu_is_refused_before_its_body(suite: RunningSuite) -> None:
    bystander = suite.login("bob")
    bad = suite.client()
    header = encode_pdu(3, 0x0301, 1)[:16]
    bad.send_raw(b"\x7f\xff\xff\xff" + header[4:])  # claims 2 GiB
    assert bad.wait_closed(5)
    assert "outside 16.." in suite.log_text("msg_server")
    assert bystander.is_connected


def test_login_deadline_closes_silent_connection(make_suite: SuiteFactory) -> None:
    suite = make_suite({"msg": {"login_timeout_s": 0.5}})
    c = suite.client()
    assert c.wait_closed(5)


def test_silent_client_is_closed_after_its_timeout(make_suite: SuiteFactory) -> None:
    suite = make_suite({"msg": {"client_timeout_s": 1.0}})
    alice = suite.login("alice")  # the SDK heartbeats every 30 s: too late for 1 s
    assert alice.wait_closed(6)
    assert "nothing received" in suite.log_text("msg_server")


def test_heartbeat_is_echoed_unchanged(suite: RunningSuite) -> None:
    # A plain socket: heartbeats are served before login, and the bytes must come back as sent.
    pdu = bytes.fromhex("00000010 0001 0000 0007 0701 0000 0000".replace(" ", ""))
    with socket.create_connection(("127.0.0.1", suite.layout.msg_ports[0]), timeout=5) as s:
        s.sendall(pdu)
        echoed = b""
        while len(echoed) < 16:
            chunk = s.recv(16 - len(echoed))
            assert chunk, "connection closed instead of echoing"
            echoed += chunk
    assert echoed == pdu


def test_online_delivery_and_sender_other_device(suite: RunningSuite) -> None:
    alice = suite.login("alice")
    alice_phone = suite.login("alice", client_type=base.CLIENT_TYPE_IOS)
    bob = suite.login("bob")
    ack = alice.send_text(bob.user_id, "hi bob")
    assert ack.msg_id == 1 and ack.session_id == bob.user_id
    for device in (bob, alice_phone):
        got = device.wait_for(msg_pb.IMMsgData, 5)
        assert (got.msg_id, got.from_user_id, got.msg_data) == (1, alice.user_id, b"hi bob")


def test_sender_id_comes_from_the_session(suite: RunningSuite) -> None:
    alice, bob = suite.login("alice"), suite.login("bob")
    forged = msg_pb.IMMsgData(
        from_user_id=bob.user_id,  # a lie
        to_session_id=bob.user_id,
        msg_id=0,
        create_time=0,
        msg_type=base.MSG_TYPE_SINGLE_TEXT,
        msg_data=b"forged",
    )
    alice.request(forged, msg_pb.IMMsgDataAck)
    got = bob.wait_for(msg_pb.IMMsgData, 5)
    assert got.from_user_id == alice.user_id


def test_offline_messages_are_caught_up_by_unread_and_history(suite: RunningSuite) -> None:
    alice = suite.login("alice")
    bob_id = suite.login("bob").user_id
    suite.clients[-1].close()
    acks = [alice.send_text(bob_id, f"m{i}") for i in range(5)]
    assert [a.msg_id for a in acks] == [1, 2, 3, 4, 5]
    bob = suite.login("bob")
    unread = bob.unread()
    assert unread.total_cnt == 5
    (info,) = unread.unreadinfo_list
    assert (info.session_id, info.unread_cnt, info.latest_msg_id) == (alice.user_id, 5, 5)
    history = bob.history(alice.user_id, begin=0, count=3)
    assert [m.msg_id for m in history.msg_list] == [5, 4, 3]
    older = bob.history(alice.user_id, begin=2, count=10)
    assert [(m.msg_id, m.msg_data) for m in older.msg_list] == [(2, b"m1"), (1, b"m0")]


def test_read_ack_clears_unread_and_notifies_other_devices(suite: RunningSuite) -> None:
    alice = suite.login("alice")
    bob = suite.login("bob")
    bob_phone = suite.login("bob", client_type=base.CLIENT_TYPE_ANDROID)
    for i in range(3):
        alice.send_text(bob.user_id, f"n{i}")
    bob.read_ack(alice.user_id, 3)
    notify = bob_phone.wait_for(msg_pb.IMMsgDataReadNotify, 5)
    assert (notify.session_id, notify.msg_id) == (alice.user_id, 3)
    deadline = time.monotonic() + 5
    while bob.unread().total_cnt != 0:
        assert time.monotonic() < deadline, "read ack did not clear the unread count"
        time.sleep(0.05)


def test_ids_are_contiguous_with_concurrent_senders(suite: RunningSuite) -> None:
    alice, bob = suite.login("alice"), suite.login("bob")
    per_sender = 40
    ids: queue.Queue[int] = queue.Queue()

    def send(sender: Client, to: int) -> None:
        for i in range(per_sender):
            ids.put(sender.send_text(to, f"{i}").msg_id)

    threads = [
        threading.Thread(target=send, args=(alice, bob.user_id)),
        threading.Thread(target=send, args=(bob, alice.user_id)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = sorted(ids.get_nowait() for _ in range(ids.qsize()))
    assert got == list(range(1, 2 * per_sender + 1))
    latest = alice.request(
        msg_pb.IMGetLatestMsgIdReq(
            user_id=0,
            session_type=base.SESSION_TYPE_SINGLE,
            session_id=bob.user_id,
        ),
        msg_pb.IMGetLatestMsgIdRsp,
    )
    assert latest.latest_msg_id == 2 * per_sender


def test_presence_notify_and_users_stat(suite: RunningSuite) -> None:
    # IMUsersStatReq answers and subscribes (tests/servers/test_presence.py has the rest).
    alice = suite.login("alice")
    bob_id = next(u.user_id for u in alice.all_users().user_list if u.user_nick_name == "Bob")
    stat = alice.request(
        buddy.IMUsersStatReq(user_id=0, user_id_list=[bob_id, 9999]), buddy.IMUsersStatRsp
    )
    assert [(s.user_id, s.status) for s in stat.user_stat_list] == [
        (bob_id, base.USER_STATUS_OFFLINE),
        (9999, base.USER_STATUS_OFFLINE),
    ]
    bob = suite.login("bob")
    notify = alice.wait_for(buddy.IMUserStatNotify, 5)
    assert (notify.user_stat.user_id, notify.user_stat.status) == (
        bob.user_id,
        base.USER_STATUS_ONLINE,
    )
    stat = alice.request(
        buddy.IMUsersStatReq(user_id=0, user_id_list=[bob.user_id]), buddy.IMUsersStatRsp
    )
    assert [(s.user_id, s.status) for s in stat.user_stat_list] == [
        (bob.user_id, base.USER_STATUS_ONLINE)
    ]
    bob.close()
    gone = alice.wait_for(buddy.IMUserStatNotify, 5)
    assert (gone.user_stat.user_id, gone.user_stat.status) == (
        bob.user_id,
        base.USER_STATUS_OFFLINE,
    )


def test_all_users_lists_the_demo_users(suite: RunningSuite) -> None:
    alice = suite.login("alice")
    names = sorted(u.user_nick_name for u in alice.all_users().user_list)
    assert names == ["Alice", "Bob", "Carol", "Dave"]


def _msg(to: int, n: int) -> msg_pb.IMMsgData:
    return msg_pb.IMMsgData(
        from_user_id=0,
        to_session_id=to,
        msg_id=0,
        create_time=0,
        msg_type=base.MSG_TYPE_SINGLE_TEXT,
        msg_data=b"x%d" % n,
    )


def test_above_its_rate_a_sender_is_slowed_never_dropped(make_suite: SuiteFactory) -> None:
    suite = make_suite({"msg": {"msg_rate_per_s": 20.0, "msg_burst": 5}})
    alice, bob = suite.login("alice"), suite.login("bob")
    # Eight at once (no waiting for acks) against a burst of five: all eight are
    # stored and acked, the last ones later, as the rate allows (a debt of three,
    # within the burst that the debt may reach before it counts as a flood).
    with ThreadPoolExecutor(8) as pool:
        sends = [
            pool.submit(alice.request, _msg(bob.user_id, n), msg_pb.IMMsgDataAck, 10)
            for n in range(8)
        ]
        acks = [f.result(15) for f in sends]
    assert sorted(a.msg_id for a in acks) == list(range(1, 9))
    got = [bob.wait_for(msg_pb.IMMsgData, 5) for _ in range(8)]
    assert [m.msg_id for m in got] == list(range(1, 9))
    assert sorted(m.msg_data for m in got) == sorted(b"x%d" % n for n in range(8))
    assert alice.is_connected
    assert "flooding" not in suite.log_text("msg_server")


def test_a_flood_far_above_the_rate_is_closed_with_its_reason(make_suite: SuiteFactory) -> None:
    suite = make_suite({"msg": {"msg_rate_per_s": 1.0, "msg_burst": 3}})
    bob = suite.login("bob")
    with socket.create_connection(("127.0.0.1", suite.layout.msg_ports[0]), timeout=10) as s:
        login = login_pb.IMLoginReq(
            user_name="alice",
            password=password_digest(DEMO_PASSWORD),
            online_status=base.USER_STATUS_ONLINE,
            client_type=base.CLIENT_TYPE_WINDOWS,
            client_version="flood",
        )
        s.sendall(encode_message(login, 1))
        answer = b""
        while len(answer) < HEADER_LEN or len(answer) < parse_header(answer).length:
            answer += s.recv(65536)
        res = login_pb.IMLoginRes.FromString(answer[HEADER_LEN : parse_header(answer).length])
        assert res.result_code == 0
        # One write of 50 messages, far beyond a burst of 3 at 1/s.
        s.sendall(b"".join(encode_message(_msg(bob.user_id, n), 2 + n) for n in range(50)))
        with pytest.raises(ConnectionResetError):  # aborted with our data unread
            while s.recv(65536):
                pass
    assert "flooding (more than 3 messages beyond 1/s); closing" in suite.log_text("msg_server")
    # What was served before the close was stored and delivered, in order, without gaps.
    got = [bob.wait_for(msg_pb.IMMsgData, 5)]
    while True:
        try:
            got.append(bob.wait_for(msg_pb.IMMsgData, 0.5))
        except queue.Empty:
            break
    assert [m.msg_id for m in got] == list(range(1, len(got) + 1))
    assert [m.msg_data for m in got] == [b"x%d" % n for n in range(len(got))]
    assert 3 <= len(got) < 50
    carol = suite.login("carol")  # nobody else noticed
    assert carol.send_text(bob.user_id, "fine").msg_id == 1


def test_two_senders_in_one_conversation_deliver_in_msg_id_order(
    make_suite: SuiteFactory,
) -> None:
    # Both users of each pair send at once and each user has a second device: every
    # connection must see each conversation's messages once and in msg_id order,
    # although their stores commit together and their workers wake in any order.
    from imreactor.accounts import create_users
    from imreactor.client.load import LoadOptions, run_load

    suite = make_suite({"msg": {"msg_rate_per_s": 100000.0, "msg_burst": 100000}})
    create_users(suite.layout.database_url, [f"load{i}" for i in range(8)], "pw")
    report = run_load(
        LoadOptions(
            login_url=suite.http_url,
            users=8,
            password="pw",
            duplex=True,
            devices=2,
            in_flight=4,
            count=800,
        )
    )
    assert report.ok, report.text()
    assert report.errors.get("reorders", 0) == 0


THROTTLE = {
    "throttle_account_free": 1,
    "throttle_account_lockout": 3,
    "throttle_address_free": 2,
    "throttle_address_lockout": 10,
    "throttle_delay_s": 1.0,
    "throttle_max_delay_s": 1.0,
    "throttle_lockout_s": 3.0,
    "throttle_answer_delay_s": 0.0,  # answered at once: the timeline below stays short
}


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)  # no database involved
def test_failed_logins_are_throttled_per_account_and_per_address(
    make_suite: SuiteFactory,
) -> None:
    suite = make_suite({"msg": THROTTLE})
    suite.login("carol").close()  # msg_server is linked

    def attempt(name: str, password: str, source: str) -> Any:
        c = suite.client(source_host=source)
        res = c.login(name, password, check=False)
        c.close()
        return res

    # Per account: one free failure, then a wait; an attempt inside it is refused the
    # normal way without reaching db_proxy, so even the right password fails ...
    assert attempt("alice", "wrong", "127.0.0.2").result_code == 6
    assert attempt("alice", "wrong", "127.0.0.2").result_code == 6
    res = attempt("alice", DEMO_PASSWORD, "127.0.0.4")
    assert res.result_code == base.REFUSE_REASON_DB_VALIDATE_FAILED
    assert "too many failed logins" in res.result_string
    # ... and the third failure locks the account for throttle_lockout_s.
    time.sleep(1.1)
    assert "too many" not in attempt("alice", "wrong", "127.0.0.2").result_string
    time.sleep(1.1)  # past any delay, inside the lockout
    assert "too many" in attempt("alice", DEMO_PASSWORD, "127.0.0.4").result_string
    assert "account 'alice' locked out" in suite.log_text("msg_server")

    # Per address: made-up names from one address; past its free failures, that address
    # waits, whatever the name, while the same user from another address does not.
    for i in range(3):
        assert attempt(f"nobody{i}", "x", "127.0.0.3").result_code == 6
    assert "too many" in attempt("bob", DEMO_PASSWORD, "127.0.0.3").result_string
    assert attempt("bob", DEMO_PASSWORD, "127.0.0.5").result_code == 0

    # The lockout expires (throttled attempts meanwhile do not extend it): alice logs in.
    deadline = time.monotonic() + THROTTLE["throttle_lockout_s"] + 5
    while (res := attempt("alice", DEMO_PASSWORD, "127.0.0.4")).result_code != 0:
        assert "too many" in res.result_string and time.monotonic() < deadline
        time.sleep(0.3)


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)  # no database involved
def test_a_throttled_login_is_answered_late_and_others_are_not(make_suite: SuiteFactory) -> None:
    suite = make_suite({"msg": {**THROTTLE, "throttle_answer_delay_s": 0.5}})
    suite.login("carol").close()  # msg_server is linked

    def attempt(name: str, password: str, source: str) -> tuple[Any, float]:
        c = suite.client(source_host=source)
        start = time.monotonic()
        res = c.login(name, password, check=False)
        elapsed = time.monotonic() - start
        c.close()
        return res, elapsed

    for _ in range(2):  # the free failure, then the one that starts a 1 s wait
        assert attempt("alice", "wrong", "127.0.0.2")[0].result_code == 6
    res, elapsed = attempt("alice", "wrong", "127.0.0.2")
    assert "too many failed logins" in res.result_string
    assert elapsed >= 0.45  # held back for throttle_answer_delay_s (at most its wait)
    # A guesser closing before its answer leaves nothing behind: the server goes on.
    c = suite.client(source_host="127.0.0.2")
    req = login_pb.IMLoginReq(
        user_name="alice",
        password=password_digest("x"),
        online_status=base.USER_STATUS_ONLINE,
        client_type=base.CLIENT_TYPE_WINDOWS,
    )
    c.send(req)
    c.close()
    assert attempt("bob", DEMO_PASSWORD, "127.0.0.5")[0].result_code == 0
    # Timers fire in order: once this later throttled answer came, the orphaned one ran.
    assert "too many" in attempt("alice", "wrong", "127.0.0.2")[0].result_string
    assert "Traceback" not in suite.log_text("msg_server")
