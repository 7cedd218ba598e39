"""``ClientSession`` on the reactor against a real suite (SQLite): presence subscriptions.

The test drives the loop itself (``run_once``), so it is the loop thread; a
recording proxy between the session and msg_server shows what went on the wire.
"""

from __future__ import annotations

from typing import Any

import pytest
from net.helpers import drive_until
from servers.conftest import RunningSuite

from imreactor.client.session import ClientSession
from imreactor.net import EventLoop
from imreactor.pdu.password import password_digest
from imreactor.pdu.proto import im_base_define_pb2 as base
from imreactor.pdu.proto import im_buddy_pb2 as buddy
from imreactor.pdu.proto import im_login_pb2 as login_pb
from imreactor.servers.suite import DEMO_PASSWORD

from .recording_proxy import RecordingProxy

pytestmark = pytest.mark.parametrize("database", ["sqlite"], indirect=True)


class Answers:
    """Response callbacks that keep what they got, for ``ClientSession.request``."""

    def __init__(self) -> None:
        self.got: list[tuple[Any, BaseException | None]] = []

    def __call__(self, message: Any, exc: BaseException | None) -> None:
        self.got.append((message, exc))

    def only(self) -> Any:
        """The one answer, which must be a response."""
        ((message, exc),) = self.got
        assert exc is None, exc
        return message


def test_watch_names_the_users_that_fit_and_counts_every_stat_request(
    suite: RunningSuite,
) -> None:
    bob = suite.login("bob")  # the suite is up; bob is online
    ids = {u.user_nick_name: u.user_id for u in bob.all_users().user_list}
    b, c, d = ids["Bob"], ids["Carol"], ids["Dave"]
    proxy = RecordingProxy(("127.0.0.1", suite.layout.msg_ports[0]))
    loop = EventLoop()
    try:
        session = ClientSession(lambda message, seq: None, watch_limit=2)
        loop.connect("127.0.0.1", proxy.port, session)
        drive_until(loop, lambda: session.connected)
        logged_in = Answers()
        req = login_pb.IMLoginReq(
            user_name="alice",
            password=password_digest(DEMO_PASSWORD),
            online_status=base.USER_STATUS_ONLINE,
            client_type=base.CLIENT_TYPE_WINDOWS,
        )
        session.request(req, logged_in, response=login_pb.IMLoginRes)
        drive_until(loop, lambda: bool(logged_in.got))
        me = logged_in.only().user_info.user_id

        # A plain status request subscribes too (on a server that routes by subscription).
        plain = Answers()
        session.request(
            buddy.IMUsersStatReq(user_id=me, user_id_list=[b]),
            plain,
            response=buddy.IMUsersStatRsp,
        )
        assert session.watched == {b}
        watched = Answers()
        assert session.watch([c, d, b, c], watched, user_id=me) == [c, b]
        assert session.watched == {b, c}
        full = Answers()
        assert session.watch([d], full, user_id=me) == []  # no room: nothing is sent
        with pytest.raises(ValueError, match="at least 0"):
            ClientSession(lambda message, seq: None, watch_limit=-1)
        drive_until(loop, lambda: bool(watched.got))
        statuses = {s.user_id: s.status for s in watched.only().user_stat_list}
        assert statuses == {c: base.USER_STATUS_OFFLINE, b: base.USER_STATUS_ONLINE}
        assert len(plain.got) == 1 and full.got == []  # answers come in order: none was due
        named = [list(r.user_id_list) for r in proxy.messages(buddy.IMUsersStatReq)[0]]
        assert named == [[b], [c, b]]
    finally:
        loop.close()
        proxy.close()
