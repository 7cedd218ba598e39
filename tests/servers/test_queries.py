"""The queries msg_server forwards to db_proxy, end to end (SQLite and PostgreSQL).

Recent sessions and removing one, users by id, departments (incremental),
messages by id and the latest id, sign info with its notification, client time;
and login_server restarting: msg_server registers again with a recount.
"""

from __future__ import annotations

import json
import time
import urllib.request

from imreactor.pdu.proto import im_base_define_pb2 as base
from imreactor.pdu.proto import im_buddy_pb2 as buddy
from imreactor.pdu.proto import im_message_pb2 as msg_pb
from imreactor.storage import open_storage

from .conftest import RunningSuite, scrape

SINGLE = base.SESSION_TYPE_SINGLE


def test_recent_sessions_and_remove(suite: RunningSuite) -> None:
    alice, bob = suite.login("alice"), suite.login("bob")
    alice.send_text(bob.user_id, "one")
    rsp = alice.request(
        buddy.IMRecentContactSessionReq(user_id=0, latest_update_time=0),
        buddy.IMRecentContactSessionRsp,
    )
    (session,) = rsp.contact_session_list
    assert (session.session_id, session.latest_msg_id, session.latest_msg_data) == (
        bob.user_id,
        1,
        b"one",
    )
    removed = alice.request(
        buddy.IMRemoveSessionReq(user_id=0, session_type=SINGLE, session_id=bob.user_id),
        buddy.IMRemoveSessionRsp,
    )
    assert removed.result_code == 0
    again = alice.request(
        buddy.IMRecentContactSessionReq(user_id=0, latest_update_time=0),
        buddy.IMRecentContactSessionRsp,
    )
    assert [s.session_id for s in again.contact_session_list] == []


def test_users_by_id_and_departments(suite: RunningSuite) -> None:
    store = open_storage(suite.layout.database_url)
    try:
        dept = store.add_department("Engineering")
    finally:
        store.close()
    alice, bob = suite.login("alice"), suite.login("bob")
    users = alice.request(
        buddy.IMUsersInfoReq(user_id=0, user_id_list=[bob.user_id, 99999]), buddy.IMUsersInfoRsp
    )
    assert [(u.user_id, u.user_nick_name) for u in users.user_info_list] == [(bob.user_id, "Bob")]
    depts = alice.request(
        buddy.IMDepartmentReq(user_id=0, latest_update_time=0), buddy.IMDepartmentRsp
    )
    assert [(d.dept_id, d.dept_name) for d in depts.dept_list] == [(dept.dept_id, "Engineering")]
    later = alice.request(
        buddy.IMDepartmentReq(user_id=0, latest_update_time=depts.latest_update_time + 1),
        buddy.IMDepartmentRsp,
    )
    assert list(later.dept_list) == []


def test_messages_by_id_and_latest_id(suite: RunningSuite) -> None:
    alice, bob = suite.login("alice"), suite.login("bob")
    for i in range(5):
        alice.send_text(bob.user_id, f"m{i}")
    by_id = bob.request(
        msg_pb.IMGetMsgByIdReq(
            user_id=0, session_type=SINGLE, session_id=alice.user_id, msg_id_list=[2, 4, 77]
        ),
        msg_pb.IMGetMsgByIdRsp,
    )
    assert [(m.msg_id, m.msg_data) for m in by_id.msg_list] == [(2, b"m1"), (4, b"m3")]
    latest = bob.request(
        msg_pb.IMGetLatestMsgIdReq(user_id=0, session_type=SINGLE, session_id=alice.user_id),
        msg_pb.IMGetLatestMsgIdRsp,
    )
    assert latest.latest_msg_id == 5


def test_sign_info_change_is_stored_and_announced(suite: RunningSuite) -> None:
    alice, bob = suite.login("alice"), suite.login("bob")
    rsp = alice.request(
        buddy.IMChangeSignInfoReq(user_id=0, sign_info="busy"), buddy.IMChangeSignInfoRsp
    )
    assert rsp.result_code == 0
    notify = bob.wait_for(buddy.IMSignInfoChangedNotify, 5)
    assert (notify.changed_user_id, notify.sign_info) == (alice.user_id, "busy")
    info = bob.request(
        buddy.IMUsersInfoReq(user_id=0, user_id_list=[alice.user_id]), buddy.IMUsersInfoRsp
    )
    assert info.user_info_list[0].sign_info == "busy"


def test_client_time(suite: RunningSuite) -> None:
    alice = suite.login("alice")
    rsp = alice.request(msg_pb.IMClientTimeReq(), msg_pb.IMClientTimeRsp)
    assert abs(rsp.server_time - time.time()) < 5


def test_login_server_restart_gets_a_recount(suite: RunningSuite) -> None:
    suite.login("alice")
    suite.login("bob")
    suite.restart("login_server")
    deadline = time.monotonic() + 10
    while True:
        metrics = scrape(suite.http_url + "/metrics")
        if metrics.get(("imreactor_login_users", ())) == 2:
            break
        assert time.monotonic() < deadline, metrics
        time.sleep(0.1)
    with urllib.request.urlopen(suite.http_url + "/msg_server", timeout=5) as rsp:
        answer = json.loads(rsp.read())
    assert answer["code"] == 0 and answer["port"] == str(suite.layout.msg_ports[0])
