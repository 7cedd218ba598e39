"""The per-connection sequencer that keeps a conversation in msg_id order across servers.

A fake clock drives the wait; what the connection sees is recorded in order.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from imreactor.net import EventLoop
from imreactor.net.testing import FakeClock
from imreactor.pdu.proto import im_base_define_pb2 as base
from imreactor.pdu.proto import im_message_pb2 as msg_pb
from imreactor.servers.msg.ordering import Sequencer, conversation_of


def msg(msg_id: int, sender: int = 1, to: int = 2, msg_type: int = 0x01) -> Any:
    return msg_pb.IMMsgData(
        from_user_id=sender,
        to_session_id=to,
        msg_id=msg_id,
        create_time=0,
        msg_type=msg_type,  # type: ignore[arg-type]
        msg_data=b"",
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(100.0)


@pytest.fixture
def loop(clock: FakeClock) -> Iterator[EventLoop]:
    loop = EventLoop(clock=clock)
    yield loop
    loop.close()


@pytest.fixture
def seen() -> list[int]:
    return []


@pytest.fixture
def seq(loop: EventLoop) -> Sequencer:
    return Sequencer(loop, wait_s=0.5)


def deliver(seq: Sequencer, seen: list[int], m: Any) -> None:
    """Deliver ``m`` through ``seq``; what the connection would send is recorded in ``seen``."""
    seq.deliver(m, lambda: seen.append(m.msg_id))


def test_conversation_key_is_the_pair_or_the_group() -> None:
    assert conversation_of(msg(1, 5, 3)) == conversation_of(msg(1, 3, 5)) == (1, 3, 5)
    assert conversation_of(msg(1, 5, 77, 0x11)) == (2, 77, 0)


def test_in_order_goes_straight_through(seq: Sequencer, seen: list[int]) -> None:
    for i in (1, 2, 3):
        deliver(seq, seen, msg(i))
    assert seen == [1, 2, 3]


def test_a_gap_holds_until_it_fills(seq: Sequencer, seen: list[int]) -> None:
    deliver(seq, seen, msg(1))
    deliver(seq, seen, msg(3))
    deliver(seq, seen, msg(4))
    assert seen == [1]
    deliver(seq, seen, msg(2))
    assert seen == [1, 2, 3, 4]


def test_an_ack_is_part_of_the_order(seq: Sequencer, seen: list[int]) -> None:
    deliver(seq, seen, msg(1))
    seq.acked(msg(0, 2, 1), 3, lambda: seen.append(-3))  # our own message, stored as 3
    assert seen == [1]  # 2 (the peer's) is not here yet: the ack waits for it
    deliver(seq, seen, msg(2))
    assert seen == [1, 2, -3]


def test_a_gap_that_never_fills_is_given_up_after_the_wait(
    loop: EventLoop, clock: FakeClock, seq: Sequencer, seen: list[int]
) -> None:
    deliver(seq, seen, msg(1))
    deliver(seq, seen, msg(4))
    deliver(seq, seen, msg(3))
    clock.advance(0.4)
    loop.run_once(0)
    assert seen == [1]
    clock.advance(0.2)
    loop.run_once(0)
    assert seen == [1, 3, 4]
    deliver(seq, seen, msg(5))
    deliver(seq, seen, msg(2))  # late: still delivered, never dropped
    assert seen == [1, 3, 4, 5, 2]


def test_first_message_above_one_waits_for_a_smaller_id(
    loop: EventLoop, clock: FakeClock, seq: Sequencer, seen: list[int]
) -> None:
    deliver(seq, seen, msg(8))
    assert seen == []
    deliver(seq, seen, msg(7))
    assert seen == []  # 7 has no known predecessor either
    clock.advance(0.6)
    loop.run_once(0)
    assert seen == [7, 8]


def test_conversations_are_independent(seq: Sequencer, seen: list[int]) -> None:
    deliver(seq, seen, msg(1, 1, 2))
    deliver(seq, seen, msg(3, 1, 2))
    deliver(seq, seen, msg(1, 1, 9))
    assert seen == [1, 1]
    seq.close()


def test_an_answer_naming_the_latest_id_releases_a_first_message(
    seq: Sequencer, seen: list[int]
) -> None:
    deliver(seq, seen, msg(8, 1, 2))
    assert seen == []
    # User 2 asked for its unread counts: the session with user 1 is at id 7.
    rsp = msg_pb.IMUnreadMsgCntRsp(user_id=2, total_cnt=1)
    rsp.unreadinfo_list.add(
        session_id=1,
        session_type=base.SESSION_TYPE_SINGLE,
        unread_cnt=1,
        latest_msg_id=7,
        latest_msg_data=b"",
        latest_msg_type=base.MSG_TYPE_SINGLE_TEXT,
        latest_msg_from_user_id=1,
    )
    seq.learned(rsp, 2)
    assert seen == [8]
    deliver(seq, seen, msg(9, 1, 2))  # and what follows goes straight through
    assert seen == [8, 9]


def test_a_history_page_and_a_latest_id_answer_count_too(seq: Sequencer, seen: list[int]) -> None:
    deliver(seq, seen, msg(5, 1, 2))
    deliver(seq, seen, msg(3, 7, 70, 0x11))  # a group message, id 3
    page = msg_pb.IMGetMsgListRsp(
        user_id=2, session_type=base.SESSION_TYPE_SINGLE, session_id=1, msg_id_begin=4
    )
    page.msg_list.add(msg_id=3, from_session_id=1, create_time=0, msg_type=1, msg_data=b"")
    page.msg_list.add(msg_id=4, from_session_id=1, create_time=0, msg_type=1, msg_data=b"")
    seq.learned(page, 2)
    assert seen == [5]
    latest = msg_pb.IMGetLatestMsgIdRsp(
        user_id=2, session_type=base.SESSION_TYPE_GROUP, session_id=70, latest_msg_id=2
    )
    seq.learned(latest, 2)
    assert seen == [5, 3]


def test_a_learned_id_makes_smaller_held_ones_late_and_first(
    seq: Sequencer, seen: list[int]
) -> None:
    deliver(seq, seen, msg(5, 1, 2))
    deliver(seq, seen, msg(7, 1, 2))
    latest = msg_pb.IMGetLatestMsgIdRsp(
        user_id=2, session_type=base.SESSION_TYPE_SINGLE, session_id=1, latest_msg_id=6
    )
    seq.learned(latest, 2)
    assert seen == [5, 7]  # 5 is late but goes out before 7, never after
    stale = msg_pb.IMGetLatestMsgIdRsp(
        user_id=2, session_type=base.SESSION_TYPE_SINGLE, session_id=1, latest_msg_id=3
    )
    seq.learned(stale, 2)  # an older answer does not move the order back
    deliver(seq, seen, msg(8, 1, 2))
    assert seen == [5, 7, 8]
