"""``CatchUp`` against a message store in memory: each message passes once per
``(session, msg_id)``, missed ones come in id order before the held live ones, the
baseline and the first login's time bound what counts as missed, history is paged
and capped, and a failed catch-up keeps holding."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from google.protobuf.message import Message

from imreactor.client import catchup
from imreactor.client.catchup import (
    CATCH_UP_MAX_PER_SESSION,
    HISTORY_PAGE,
    CatchUp,
    SessionKey,
    session_of,
)
from imreactor.client.errors import ClientError
from imreactor.pdu.proto import im_base_define_pb2 as base
from imreactor.pdu.proto import im_buddy_pb2 as buddy
from imreactor.pdu.proto import im_message_pb2 as msg_pb

ME = 1
LOGIN_TIME = 1_000
SINGLE = base.SESSION_TYPE_SINGLE
GROUP = base.SESSION_TYPE_GROUP
PEER = (SINGLE, 2)
OTHER = (SINGLE, 3)
GROUP_9 = (GROUP, 9)


class FakeServer:
    """The requests a catch-up sends, answered from sessions kept in memory."""

    def __init__(self) -> None:
        self.user_id = ME
        self.sessions: dict[SessionKey, list[base.MsgInfo]] = {}
        self.history_calls: list[tuple[int, int, int, int]] = []
        self.failing: ClientError | None = None  # raised by every request while set
        self.not_recent: set[SessionKey] = set()  # left out of the recent sessions

    def store(self, key: SessionKey, msg_id: int, *, mine: bool = False, at: int = 0) -> None:
        """Store message ``msg_id`` in session ``key``, from this user when ``mine``."""
        sender = ME if mine else 7 if key[0] == GROUP else key[1]
        self.sessions.setdefault(key, []).append(
            base.MsgInfo(
                msg_id=msg_id,
                from_session_id=sender,
                create_time=at or LOGIN_TIME + msg_id,
                msg_type=base.MSG_TYPE_GROUP_TEXT if key[0] == GROUP else base.MSG_TYPE_SINGLE_TEXT,
                msg_data=f"m{msg_id}".encode(),
            )
        )

    def _check(self) -> None:
        if self.failing is not None:
            raise self.failing

    def unread(self) -> Any:
        # Only the 1:1 sessions count as unread here, so group sessions are in the
        # recent list alone; with `not_recent`, a 1:1 session is in the unread alone.
        self._check()
        rsp = msg_pb.IMUnreadMsgCntRsp(user_id=ME)
        for (stype, sid), msgs in self.sessions.items():
            if stype == SINGLE:
                rsp.unreadinfo_list.add(
                    session_id=sid, session_type=stype, unread_cnt=1, latest_msg_id=msgs[-1].msg_id
                )
        return rsp

    def recent_sessions(self, since: int = 0) -> Any:
        self._check()
        rsp = buddy.IMRecentContactSessionRsp(user_id=ME)
        for (stype, sid), msgs in self.sessions.items():
            if (stype, sid) not in self.not_recent:
                rsp.contact_session_list.add(
                    session_id=sid, session_type=stype, latest_msg_id=msgs[-1].msg_id
                )
        return rsp

    def history(
        self, session_id: int, begin: int = 0, count: int = 20, session_type: int = SINGLE
    ) -> Any:
        """Ids ≤ ``begin`` (0: from the newest), newest first, at most ``count`` (≤ 200)."""
        self._check()
        self.history_calls.append((session_id, begin, count, session_type))
        msgs = self.sessions.get((session_type, session_id), [])
        page = sorted(
            (m for m in msgs if begin == 0 or m.msg_id <= begin), key=lambda m: -m.msg_id
        )[: min(count, 200)]
        return msg_pb.IMGetMsgListRsp(
            user_id=ME,
            session_type=base.SessionType.ValueType(session_type),
            session_id=session_id,
            msg_id_begin=begin,
            msg_list=page,
        )


def live(key: SessionKey, msg_id: int, *, mine: bool = False) -> Any:
    """The ``IMMsgData`` msg_server pushes for message ``msg_id`` of session ``key``."""
    stype, sid = key
    if stype == GROUP:
        return msg_pb.IMMsgData(
            from_user_id=ME if mine else 7,
            to_session_id=sid,
            msg_id=msg_id,
            msg_type=base.MSG_TYPE_GROUP_TEXT,
        )
    return msg_pb.IMMsgData(
        from_user_id=ME if mine else sid,
        to_session_id=sid if mine else ME,
        msg_id=msg_id,
        msg_type=base.MSG_TYPE_SINGLE_TEXT,
    )


class Queue:
    """A ``deliver`` that keeps ``(session, msg_id, seq)`` of what it gets, in order."""

    def __init__(self) -> None:
        self.got: list[tuple[SessionKey, int, int]] = []
        self.messages: list[Any] = []

    def __call__(self, message: Message, seq: int) -> None:
        assert isinstance(message, msg_pb.IMMsgData)
        self.got.append((session_of(message, ME), message.msg_id, seq))
        self.messages.append(message)


def logged_in(server: FakeServer) -> CatchUp:
    cu = CatchUp()
    cu.logged_in(LOGIN_TIME, server)
    return cu


def test_session_of_names_the_peer_or_the_group() -> None:
    assert session_of(live(PEER, 1), ME) == PEER
    assert session_of(live(PEER, 1, mine=True), ME) == PEER
    assert session_of(live(GROUP_9, 1), ME) == GROUP_9
    assert session_of(live(GROUP_9, 1, mine=True), ME) == GROUP_9


def test_each_session_and_msg_id_passes_once() -> None:
    cu = CatchUp()
    assert cu.admit(live(PEER, 5), 1, ME)
    assert not cu.admit(live(PEER, 5), 2, ME)
    # The same id in other sessions is another message.
    assert cu.admit(live(OTHER, 5), 3, ME)
    assert cu.admit(live(GROUP_9, 5), 4, ME)
    # What this user sent to the peer is the same session: it is the same message.
    assert not cu.admit(live(PEER, 5, mine=True), 5, ME)
    # An acked send counts as passed: its copy from another device is dropped.
    cu.sent(OTHER, 6)
    assert not cu.admit(live(OTHER, 6, mine=True), 6, ME)
    assert cu.admit(live(OTHER, 7), 7, ME)


def test_seen_ids_are_exact_above_a_floor_that_trails_the_newest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(catchup._Seen, "WINDOW", 4)
    cu = CatchUp()
    for msg_id in (20, 30, 31, 32, 33, 34, 35, 36):  # 8 ids: 2 windows, no floor yet
        assert cu.admit(live(PEER, msg_id), 0, ME)
    assert cu.admit(live(PEER, 25), 0, ME)  # out of order, never seen: passes
    # The ninth id raised the floor to newest - WINDOW = 32: below it is refused,
    # above it still exact.
    assert not cu.admit(live(PEER, 21), 0, ME)
    assert not cu.admit(live(PEER, 25), 0, ME)
    assert not cu.admit(live(PEER, 32), 0, ME)
    assert not cu.admit(live(PEER, 33), 0, ME)
    assert cu.admit(live(PEER, 37), 0, ME)
    assert cu.admit(live(OTHER, 21), 0, ME)  # each session has its own floor


def test_catch_up_delivers_the_missed_in_id_order_then_the_held() -> None:
    server = FakeServer()
    for msg_id in (1, 2):
        server.store(PEER, msg_id)
    cu = logged_in(server)  # baseline: PEER at 2
    server.store(PEER, 3)
    assert cu.admit(live(PEER, 3), 30, ME)

    cu.hold()  # the connection dropped; stored meanwhile:
    server.not_recent = {OTHER}
    server.store(PEER, 4)
    server.store(PEER, 5, mine=True)  # sent from another device
    server.store(OTHER, 7)
    server.store(GROUP_9, 6)
    # After the re-login, before the catch-up: live pushes are held, one of them
    # also among the missed.
    server.store(PEER, 8)
    assert not cu.admit(live(PEER, 8), 80, ME)
    assert not cu.admit(live(GROUP_9, 6), 60, ME)
    assert not cu.admit(live(PEER, 8), 81, ME)  # a duplicate is not even held

    out = Queue()
    cu.catch_up(server, out)
    assert out.got == [
        (PEER, 4, 0),
        (PEER, 5, 0),
        (OTHER, 7, 0),
        # GROUP_9's 6 was held already: it comes once, with the held ones.
        (PEER, 8, 80),
        (GROUP_9, 6, 60),
    ]
    assert cu.caught_up == 3
    # The missed ones look as msg_server would have pushed them.
    from_peer, from_me, from_other = out.messages[:3]
    assert (from_peer.from_user_id, from_peer.to_session_id) == (2, ME)
    assert (from_me.from_user_id, from_me.to_session_id) == (ME, 2)
    assert (from_other.from_user_id, from_other.msg_data) == (3, b"m7")
    # Sessions in key order, each paged down from its newest id to where it stood
    # (PEER: baseline 2, then 3 seen live; the others: nothing), an empty page ending it.
    assert server.history_calls == [
        (2, 8, 5, SINGLE),
        (3, 7, 7, SINGLE),
        (3, 6, 6, SINGLE),
        (9, 6, 6, GROUP),
        (9, 5, 5, GROUP),
    ]
    # Held no more: live messages pass at once again.
    assert cu.admit(live(PEER, 9), 90, ME)


def test_only_messages_since_the_first_login_are_missed() -> None:
    server = FakeServer()
    server.store(PEER, 1, at=LOGIN_TIME - 10)
    server.failing = ClientError("no answer")
    cu = logged_in(server)  # no baseline: catch-up goes by time alone
    assert cu.online_since == LOGIN_TIME
    server.failing = None
    cu.logged_in(LOGIN_TIME + 500, server)  # a later login moves nothing
    assert cu.online_since == LOGIN_TIME

    cu.hold()
    server.store(PEER, 2, at=LOGIN_TIME)
    out = Queue()
    cu.catch_up(server, out)
    assert out.got == [(PEER, 2, 0)]
    assert cu.caught_up == 1


def test_history_is_fetched_in_pages_up_to_the_cap() -> None:
    server = FakeServer()
    cu = logged_in(server)
    cu.hold()
    missed = CATCH_UP_MAX_PER_SESSION + 250
    for msg_id in range(1, missed + 1):
        server.store(PEER, msg_id)
    out = Queue()
    cu.catch_up(server, out)
    # The newest CATCH_UP_MAX_PER_SESSION, oldest first, in pages of HISTORY_PAGE.
    assert [msg_id for _key, msg_id, _seq in out.got] == list(
        range(missed - CATCH_UP_MAX_PER_SESSION + 1, missed + 1)
    )
    begins = [begin for _sid, begin, _n, _stype in server.history_calls]
    assert begins == list(range(missed, missed - CATCH_UP_MAX_PER_SESSION, -HISTORY_PAGE))
    assert all(n == HISTORY_PAGE for _sid, _begin, n, _stype in server.history_calls)


def test_a_failed_catch_up_keeps_holding_and_the_next_starts_where_the_link_dropped() -> None:
    server = FakeServer()
    server.store(PEER, 1)
    cu = logged_in(server)
    cu.hold()
    server.store(PEER, 2)
    server.store(PEER, 3)
    assert not cu.admit(live(PEER, 3), 30, ME)  # held

    server.failing = ClientError("connection closed")
    out = Queue()
    with pytest.raises(ClientError):
        cu.catch_up(server, out)
    assert out.got == []
    cu.hold()  # lost again: still from where it first dropped (PEER at 1), not at 3
    server.failing = None
    server.store(PEER, 4)
    assert not cu.admit(live(PEER, 4), 40, ME)  # still held

    cu.catch_up(server, out)
    assert out.got == [(PEER, 2, 0), (PEER, 3, 30), (PEER, 4, 40)]


def test_no_live_message_is_admitted_while_the_catch_up_delivers() -> None:
    server = FakeServer()
    cu = logged_in(server)
    cu.hold()
    server.store(PEER, 1)
    answers: list[bool] = []
    racer: list[threading.Thread] = []

    def deliver(message: Message, seq: int) -> None:
        if not racer:
            # A push arriving on the loop thread now waits until the catch-up ends,
            # so it can neither overtake the missed ones nor be held and forgotten.
            t = threading.Thread(target=lambda: answers.append(cu.admit(live(PEER, 2), 0, ME)))
            racer.append(t)
            t.start()
            t.join(0.1)
            assert t.is_alive()

    cu.catch_up(server, deliver)
    racer[0].join(5)
    assert answers == [True]
