"""msg_server's group membership cache (imreactor.servers.msg.groups), unit by unit.

The cache talks to a real LinkSet whose one Link is connected in memory (transport_pair)
to a fake db_proxy that records each IMGroupInfoListReq and answers when the test says
so. The loop runs on a FakeClock, so TTLs and request timeouts pass only when told.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from imreactor.net import EventLoop
from imreactor.net.testing import FakeClock, MemoryTransport, transport_pair
from imreactor.pdu.imconn import Dispatcher, ImConnection, Keepalive, LinkPolicy
from imreactor.pdu.proto import im_base_define_pb2 as base
from imreactor.pdu.proto import im_group_pb2 as group_pb
from imreactor.servers.links import Link, LinkSet
from imreactor.servers.msg.groups import GroupCache, GroupEntry

TTL_S = 60.0
TIMEOUT_S = 5.0
START_S = 1000.0
QUIET = LinkPolicy(heartbeat_s=None, timeout_s=None)
NORMAL = base.GROUP_TYPE_NORMAL
TMP = base.GROUP_TYPE_TMP


def info(group_id: int, creator: int, members: list[int], kind: int = NORMAL) -> base.GroupInfo:
    return base.GroupInfo(
        group_id=group_id,
        version=1,
        group_name=f"g{group_id}",
        group_avatar="",
        group_creator_id=creator,
        group_type=base.GroupType.ValueType(kind),
        shield_status=0,
        group_member_list=members,
    )


class FakeDb(ImConnection):
    """db_proxy's end of the link: keeps each group info request until answered."""

    def __init__(self) -> None:
        dispatcher = Dispatcher[FakeDb]()
        dispatcher.register(group_pb.IMGroupInfoListReq, self._request)
        super().__init__(dispatcher, None, QUIET)
        self.requests: list[tuple[int, group_pb.IMGroupInfoListReq]] = []

    def _request(self, conn: FakeDb, req: group_pb.IMGroupInfoListReq, seq: int) -> None:
        self.requests.append((seq, req))

    def asked(self) -> list[int]:
        """The group ids of every request so far (one per request), in order."""
        ids = []
        for _, req in self.requests:
            assert req.user_id == 0
            [version] = req.group_version_list
            assert version.version == 0  # version 0: send the whole group
            ids.append(version.group_id)
        return ids

    def answer(self, index: int, *infos: base.GroupInfo) -> None:
        seq, _ = self.requests[index]
        self.send(group_pb.IMGroupInfoListRsp(user_id=0, group_info_list=infos), seq)


class Harness:
    def __init__(self) -> None:
        self.clock = FakeClock(START_S)
        self.loop = EventLoop(clock=self.clock)
        self.links = LinkSet(self.loop, "db_proxy", [], Dispatcher[Link](), Keepalive(self.loop))
        self.cache = GroupCache(self.loop, self.links, TTL_S, TIMEOUT_S)
        self.db = FakeDb()
        self.link = Link(self.links, Dispatcher[Link](), QUIET)
        self.transport: MemoryTransport
        self.transport, _ = transport_pair(self.loop, self.link, self.db)
        #: (tag, entry) of every callback, in the order they ran.
        self.results: list[tuple[str, GroupEntry | None]] = []

    def get(self, group_id: int, tag: str = "") -> None:
        self.cache.get(group_id, lambda entry: self.results.append((tag, entry)))

    def settle(self) -> None:
        """Deliver what is in flight (memory transports deliver from loop callbacks)."""
        for _ in range(10):
            self.loop.run_once(0)

    def close(self) -> None:
        self.transport.abort()
        self.settle()
        self.loop.close()


@pytest.fixture
def h() -> Iterator[Harness]:
    harness = Harness()
    assert harness.links.live == [harness.link]
    try:
        yield harness
    finally:
        harness.close()


def entry(group_id: int, creator: int, members: list[int], at: float, kind: int = NORMAL) -> Any:
    return GroupEntry(group_id, creator, kind, frozenset(members), at)


# -- filling the cache -----------------------------------------------------------------------


def test_a_miss_fetches_the_group_and_later_gets_are_served_from_the_cache(h: Harness) -> None:
    h.get(7, "first")
    h.settle()
    assert h.results == []  # waits for db_proxy
    assert h.db.asked() == [7]
    assert h.cache.fetches == 1
    h.clock.advance(0.25)
    h.db.answer(0, info(7, creator=1, members=[1, 2, 3]))
    h.settle()
    expected = entry(7, 1, [1, 2, 3], START_S + 0.25)
    assert h.results == [("first", expected)]

    h.get(7, "second")  # answered at once, from the cache
    assert h.results[1] == ("second", expected)
    assert h.results[1][1] is h.results[0][1]
    h.settle()
    assert h.db.asked() == [7] and h.cache.fetches == 1


def test_gets_during_a_fetch_share_it_and_are_answered_in_order(h: Harness) -> None:
    for tag in "abc":
        h.get(7, tag)
    h.get(8, "other")
    h.settle()
    assert h.db.asked() == [7, 8]
    assert h.cache.fetches == 2
    h.db.answer(0, info(7, creator=4, members=[4, 5], kind=TMP))
    h.settle()
    expected = entry(7, 4, [4, 5], START_S, TMP)
    assert h.results == [("a", expected), ("b", expected), ("c", expected)]
    h.db.answer(1, info(8, creator=9, members=[9]))
    h.settle()
    assert h.results[3] == ("other", entry(8, 9, [9], START_S))


def test_only_the_group_asked_for_is_taken_from_the_answer(h: Harness) -> None:
    h.get(7)
    h.settle()
    h.db.answer(0, info(8, creator=2, members=[2]), info(7, creator=1, members=[1]))
    h.settle()
    assert h.results == [("", entry(7, 1, [1], START_S))]
    h.get(8)  # not cached from the answer to another request
    h.settle()
    assert h.db.asked() == [7, 8]
    assert len(h.results) == 1


def test_an_unknown_group_is_none_and_is_asked_for_again_next_time(h: Harness) -> None:
    h.get(7)
    h.settle()
    h.db.answer(0)
    h.settle()
    assert h.results == [("", None)]
    h.get(7)
    h.settle()
    assert h.db.asked() == [7, 7]


# -- no answer -------------------------------------------------------------------------------


def test_without_a_db_link_the_answer_is_none_at_once(h: Harness) -> None:
    h.transport.abort()
    h.settle()
    assert h.links.live == []
    h.get(7)
    assert h.results == [("", None)]
    assert h.cache.fetches == 0


def test_a_fetch_that_times_out_answers_none_and_the_next_get_asks_again(h: Harness) -> None:
    h.get(7, "a")
    h.get(7, "b")
    h.settle()
    h.clock.advance(TIMEOUT_S - 0.01)
    h.settle()
    assert h.results == []
    h.clock.advance(0.01)
    h.settle()
    assert h.results == [("a", None), ("b", None)]
    h.get(7, "c")
    h.settle()
    assert h.db.asked() == [7, 7]
    h.db.answer(1, info(7, creator=1, members=[1]))
    h.settle()
    assert h.results[2] == ("c", entry(7, 1, [1], START_S + TIMEOUT_S))


def test_a_request_the_link_cannot_take_answers_none_and_leaves_no_waiters(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*args: object, **kw: object) -> int:
        raise RuntimeError("65535 requests outstanding on one connection")

    monkeypatch.setattr(h.link, "request", full)
    h.get(7, "a")
    assert h.results == [("a", None)]
    monkeypatch.undo()
    h.get(7, "b")  # not stuck behind the failed fetch: asks db_proxy
    h.settle()
    assert h.db.asked() == [7]
    h.db.answer(0, info(7, creator=1, members=[1]))
    h.settle()
    assert h.results[1] == ("b", entry(7, 1, [1], START_S))


def test_a_link_lost_during_a_fetch_answers_none(h: Harness) -> None:
    h.get(7, "a")
    h.get(7, "b")
    h.settle()
    h.db.conn.abort()
    h.settle()
    assert h.results == [("a", None), ("b", None)]
    assert h.links.live == []


def test_a_failing_callback_does_not_keep_the_others_from_their_answer(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(entry: GroupEntry | None) -> None:
        raise RuntimeError("a caller's callback broke")

    h.get(7, "before")
    h.cache.get(7, broken)
    h.get(7, "after")
    h.settle()
    h.db.answer(0, info(7, creator=1, members=[1, 2]))
    h.settle()
    expected = entry(7, 1, [1, 2], START_S)
    assert h.results == [("before", expected), ("after", expected)]
    assert "a caller's callback broke" in caplog.text
    assert h.links.live == [h.link]  # the db link is not the callback's victim
    h.get(9)
    h.settle()
    assert h.db.asked() == [7, 9]


# -- keeping it fresh ------------------------------------------------------------------------


def test_an_entry_is_fetched_again_once_it_is_ttl_old(h: Harness) -> None:
    h.cache.put(7, 1, NORMAL, [1])
    h.clock.advance(TTL_S - 0.5)
    h.get(7, "fresh")
    assert h.results == [("fresh", entry(7, 1, [1], START_S))]
    h.clock.advance(0.5)
    h.get(7, "stale")
    h.settle()
    assert h.db.asked() == [7]
    assert len(h.results) == 1  # waits for the new fetch
    h.db.answer(0, info(7, creator=1, members=[1, 2]))
    h.settle()
    assert h.results[1] == ("stale", entry(7, 1, [1, 2], START_S + TTL_S))


def test_put_replaces_the_entry(h: Harness) -> None:
    first = h.cache.put(7, 1, NORMAL, [1, 2])
    assert first == entry(7, 1, [1, 2], START_S)
    h.clock.advance(1.0)
    second = h.cache.put(7, 3, TMP, (3, 4, 4))
    assert second == entry(7, 3, [3, 4], START_S + 1.0, TMP)
    h.get(7)
    assert h.results == [("", second)]
    assert h.cache.fetches == 0


def test_update_members_keeps_creator_and_type_and_restarts_the_ttl(h: Harness) -> None:
    h.cache.put(7, 1, TMP, [1, 2])
    h.clock.advance(TTL_S - 10)
    h.cache.update_members(7, [1, 3])
    h.clock.advance(TTL_S - 10)  # older than the TTL since put, not since the update
    h.get(7)
    assert h.results == [("", entry(7, 1, [1, 3], START_S + TTL_S - 10, TMP))]
    assert h.cache.fetches == 0


def test_update_members_of_a_group_not_cached_caches_nothing(h: Harness) -> None:
    h.cache.update_members(7, [1, 3])
    h.get(7)
    h.settle()
    assert h.results == []
    assert h.db.asked() == [7]


def test_invalidate_drops_the_entry(h: Harness) -> None:
    h.cache.put(7, 1, NORMAL, [1])
    h.cache.put(8, 2, NORMAL, [2])
    h.cache.invalidate(7)
    h.cache.invalidate(99)  # not cached: nothing to do
    h.get(8, "kept")
    h.get(7, "dropped")
    h.settle()
    assert h.results == [("kept", entry(8, 2, [2], START_S))]
    assert h.db.asked() == [7]


@pytest.mark.parametrize("change", ["invalidate", "update_members", "put"])
def test_an_answer_read_before_a_change_does_not_replace_it(h: Harness, change: str) -> None:
    # The fetch is answered from what db_proxy read before the group changed; the
    # change (a notification from another server, or this server's own) arrived first.
    h.get(7, "asked-before")
    h.settle()
    if change == "invalidate":
        h.cache.invalidate(7)
    elif change == "update_members":
        h.cache.update_members(7, [1, 2, 3])
    else:
        h.cache.put(7, 1, NORMAL, [1, 2, 3])
    h.db.answer(0, info(7, creator=1, members=[1, 2]))
    h.settle()
    assert h.results == [("asked-before", entry(7, 1, [1, 2], START_S))]

    h.get(7, "asked-after")
    h.settle()
    if change == "put":  # what put stored stands
        assert h.results[1] == ("asked-after", entry(7, 1, [1, 2, 3], START_S))
        assert h.db.asked() == [7]
    else:  # the pre-change answer was not cached: asked again
        assert len(h.results) == 1
        assert h.db.asked() == [7, 7]
