"""LinkSet (imreactor.servers.links): links to several peers over loopback sockets.

The peers are real listening sockets on 127.0.0.1, served by the same EventLoop as
the links. The loop runs on a FakeClock: sockets are real, time is not, so a reconnect
waits for its backoff until the test advances the clock, and "not before the backoff"
is exact instead of a guess about how long to wait.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from google.protobuf.message import Message

from imreactor.net import EventLoop, Server
from imreactor.net.testing import FakeClock
from imreactor.net.transport import ConnState
from imreactor.pdu.imconn import SERVER_LINK, Dispatcher, ImConnection, Keepalive, LinkPolicy
from imreactor.pdu.proto import im_group_pb2 as group_pb
from imreactor.servers.links import Link, LinkSet

#: Real time a test may wait for sockets to do their part: a broken LinkSet fails, never hangs.
DEADLINE_S = 10.0
#: The reconnect delay the links are given (fake seconds; the jitter is +-10 %).
BACKOFF_S = 1.0
#: Fake time advanced per step while waiting for a reconnect: past one jittered backoff.
STEP_S = 1.2
QUIET = LinkPolicy(heartbeat_s=None, timeout_s=None)


def message(user_id: int) -> group_pb.IMGroupInfoListReq:
    return group_pb.IMGroupInfoListReq(user_id=user_id)


class PeerConn(ImConnection):
    """The peer's end of one link."""


class Peer:
    """A peer server listening on 127.0.0.1: accepts links and keeps what they send."""

    def __init__(self, loop: EventLoop, port: int = 0) -> None:
        self.loop = loop
        self.accepted: list[PeerConn] = []
        #: (connection, user_id) of every message received, in order.
        self.received: list[tuple[PeerConn, int]] = []
        self._dispatcher = Dispatcher[PeerConn](default=self._got)
        self.server: Server | None = loop.listen("127.0.0.1", port, self._make)
        self.port = self.server.port

    def _make(self) -> PeerConn:
        conn = PeerConn(self._dispatcher, None, QUIET)
        self.accepted.append(conn)
        return conn

    def _got(self, conn: PeerConn, msg: Message, seq: int) -> None:
        assert isinstance(msg, group_pb.IMGroupInfoListReq)
        self.received.append((conn, msg.user_id))

    @property
    def connected(self) -> list[PeerConn]:
        return [c for c in self.accepted if c.conn.state is ConnState.CONNECTED]

    def drop_links(self) -> None:
        """Reset every link to this peer (as a peer that crashed would)."""
        for c in self.connected:
            c.conn.abort()

    def go_away(self) -> None:
        """Stop listening and drop every link: connecting to this port is refused now."""
        if self.server is not None:
            self.server.close()
            self.server = None
        self.drop_links()


class Harness:
    """The loop on a fake clock, the peers, and LinkSets that record on_up/on_down."""

    def __init__(self) -> None:
        self.clock = FakeClock(1000.0)
        self.loop = EventLoop(clock=self.clock)
        self.keepalive = Keepalive(self.loop)
        self.peers: list[Peer] = []
        self.linksets: list[LinkSet] = []
        self.ups: list[Link] = []
        self.downs: list[Link] = []
        self.refused: list[socket.socket] = []

    def peer(self, port: int = 0) -> Peer:
        p = Peer(self.loop, port)
        self.peers.append(p)
        return p

    def refused_port(self) -> int:
        """A port bound but not listening: connecting to it is refused."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.refused.append(sock)
        return int(sock.getsockname()[1])

    def links(
        self,
        ports: list[int],
        *,
        on_up: Callable[[Link], Any] | None = None,
        policy: LinkPolicy = SERVER_LINK,
    ) -> LinkSet:
        def up(link: Link) -> None:
            self.ups.append(link)
            if on_up is not None:
                on_up(link)

        ls = LinkSet(
            self.loop,
            "peer",
            [("127.0.0.1", port) for port in ports],
            Dispatcher[Link](),
            self.keepalive,
            policy=policy,
            backoff_delays_s=(BACKOFF_S,),
            on_up=up,
            on_down=self.downs.append,
        )
        self.linksets.append(ls)
        return ls

    def drive(self, predicate: Callable[[], object], what: str) -> None:
        """Run the loop (fake time standing still) until ``predicate()`` is true."""
        deadline = time.monotonic() + DEADLINE_S
        while not predicate():
            if time.monotonic() > deadline:
                pytest.fail(f"not reached within {DEADLINE_S:g} s: {what}")
            self.loop.run_once(0.01)

    def advance_until(self, predicate: Callable[[], object], what: str) -> None:
        """Move fake time on in STEP_S steps, running the loop, until ``predicate()``."""
        deadline = time.monotonic() + DEADLINE_S
        while not predicate():
            if time.monotonic() > deadline:
                pytest.fail(f"not reached within {DEADLINE_S:g} s: {what}")
            self.clock.advance(STEP_S)
            for _ in range(5):
                self.loop.run_once(0.01)

    def settle(self) -> None:
        """Run what is ready now, without moving fake time."""
        for _ in range(20):
            self.loop.run_once(0.005)

    def close(self) -> None:
        for ls in self.linksets:
            ls.stop()
        for link in self.ups:
            link.conn.abort()
        for p in self.peers:
            p.go_away()
        self.settle()
        for sock in self.refused:
            sock.close()
        self.loop.close()


@pytest.fixture
def h() -> Iterator[Harness]:
    harness = Harness()
    try:
        yield harness
    finally:
        harness.close()


def peer_port(link: Link) -> int:
    return int(link.conn.remote_address[1])


def all_up(h: Harness, ls: LinkSet, peers: list[Peer]) -> Callable[[], bool]:
    """Every peer has one link up, seen from both ends."""
    return lambda: len(ls.live) == len(peers) and all(len(p.connected) == 1 for p in peers)


# -- tests -----------------------------------------------------------------------------------


def test_without_peers_there_is_no_link_to_pick(h: Harness) -> None:
    ls = h.links([])
    assert not ls.configured
    ls.start()
    h.settle()
    assert ls.pick() is None
    assert ls.live == []
    ls.broadcast(message(1))  # to nobody, without failing
    ls.stop()
    assert h.ups == [] and h.downs == []


def test_a_link_comes_up_to_every_peer(h: Harness) -> None:
    peers = [h.peer() for _ in range(3)]
    ls = h.links([p.port for p in peers])
    assert ls.configured
    assert ls.pick() is None  # nothing is up before start()
    ls.start()
    h.drive(all_up(h, ls, peers), "a link to each of 3 peers")
    assert sorted(peer_port(link) for link in ls.live) == sorted(p.port for p in peers)
    assert sorted(map(id, h.ups)) == sorted(map(id, ls.live))
    assert h.downs == []
    assert [c.attempts for c in ls.connectors] == [1, 1, 1]


def test_on_up_announces_on_the_new_link_only(h: Harness) -> None:
    peers = [h.peer() for _ in range(3)]
    ls = h.links([p.port for p in peers], on_up=lambda link: link.send(message(peer_port(link))))
    ls.start()
    h.drive(lambda: all(p.received for p in peers), "an announcement at every peer")
    h.settle()
    for p in peers:
        assert p.received == [(p.accepted[0], p.port)]


def test_pick_goes_round_robin_over_the_live_links(h: Harness) -> None:
    peers = [h.peer() for _ in range(3)]
    ls = h.links([p.port for p in peers])
    ls.start()
    h.drive(all_up(h, ls, peers), "3 links up")
    picks = [ls.pick() for _ in range(9)]
    assert {id(link) for link in picks[:3]} == {id(link) for link in ls.live}
    assert picks[3:6] == picks[:3] and picks[6:9] == picks[:3]
    for i in range(9):
        link = ls.pick()
        assert link is not None
        link.send(message(i))
    h.drive(lambda: sum(len(p.received) for p in peers) == 9, "9 messages at the peers")
    assert sorted(len(p.received) for p in peers) == [3, 3, 3]


def test_broadcast_reaches_every_live_link_once(h: Harness) -> None:
    peers = [h.peer() for _ in range(3)]
    ls = h.links([p.port for p in peers])
    ls.start()
    h.drive(all_up(h, ls, peers), "3 links up")
    ls.broadcast(message(7))
    h.drive(lambda: all(p.received for p in peers), "the broadcast at every peer")
    h.settle()
    assert [[uid for _, uid in p.received] for p in peers] == [[7], [7], [7]]


def test_with_every_peer_down_pick_is_none_and_attempts_go_on(h: Harness) -> None:
    ls = h.links([h.refused_port(), h.refused_port()])
    ls.start()
    h.advance_until(lambda: all(c.attempts >= 3 for c in ls.connectors), "3 attempts to each peer")
    assert ls.pick() is None
    assert ls.live == []
    assert h.ups == [] and h.downs == []  # a failed attempt is neither up nor down


def test_a_dropped_link_is_replaced_after_the_backoff(h: Harness) -> None:
    a, b = h.peer(), h.peer()
    ls = h.links([a.port, b.port])
    ls.start()
    h.drive(all_up(h, ls, [a, b]), "2 links up")
    [link_a] = [link for link in ls.live if peer_port(link) == a.port]
    [link_b] = [link for link in ls.live if peer_port(link) == b.port]

    a.drop_links()
    h.drive(lambda: h.downs, "on_down for the dropped link")
    assert h.downs == [link_a]
    assert ls.live == [link_b]
    assert [ls.pick() for _ in range(4)] == [link_b] * 4

    h.settle()  # fake time stands still: no reconnect before the backoff
    assert ls.connectors[0].attempts == 1 and len(a.accepted) == 1

    h.advance_until(lambda: len(ls.live) == 2 and a.connected, "a new link to peer a")
    assert ls.connectors[0].attempts == 2
    [new_a] = [link for link in ls.live if peer_port(link) == a.port]
    assert new_a is not link_a
    assert h.ups[-1] is new_a and len(h.ups) == 3
    assert {id(ls.pick()) for _ in range(2)} == {id(new_a), id(link_b)}


def test_a_peer_that_goes_away_is_retried_until_it_returns(h: Harness) -> None:
    a, b = h.peer(), h.peer()
    ls = h.links([a.port, b.port])
    ls.start()
    h.drive(all_up(h, ls, [a, b]), "2 links up")
    a.go_away()
    h.drive(lambda: len(ls.live) == 1, "the link to peer a down")
    h.advance_until(lambda: ls.connectors[0].attempts >= 4, "3 refused attempts at peer a")
    assert [peer_port(link) for link in ls.live] == [b.port]
    assert len(h.downs) == 1

    back = h.peer(a.port)  # the peer restarts on its port
    h.advance_until(lambda: len(ls.live) == 2 and back.connected, "the link to peer a again")
    assert sorted(peer_port(link) for link in ls.live) == sorted([a.port, b.port])
    assert len(h.downs) == 1 and len(h.ups) == 3
    assert len(back.accepted) == 1


def test_when_every_link_is_lost_pick_is_none_until_one_returns(h: Harness) -> None:
    a, b = h.peer(), h.peer()
    ls = h.links([a.port, b.port])
    ls.start()
    h.drive(all_up(h, ls, [a, b]), "2 links up")
    first = ls.live
    a.drop_links()
    b.drop_links()
    h.drive(lambda: len(h.downs) == 2, "both links down")
    assert ls.pick() is None and ls.live == []
    assert sorted(map(id, h.downs)) == sorted(map(id, first))
    h.advance_until(lambda: ls.pick() is not None, "a link again")
    h.advance_until(all_up(h, ls, [a, b]), "both links again")


def test_a_silent_peer_is_dropped_by_the_keepalive_and_relinked(h: Harness) -> None:
    # The peer never sends (not even heartbeats): after SERVER_LINK.timeout_s of fake
    # time the link is closed as dead, and the connector links again.
    a = h.peer()
    ls = h.links([a.port])
    ls.start()
    h.drive(all_up(h, ls, [a]), "the link up")
    [old] = ls.live
    assert SERVER_LINK.timeout_s is not None
    h.advance_until(lambda: h.downs, "the silent link closed")
    assert h.downs == [old]
    assert h.clock.now - 1000.0 >= SERVER_LINK.timeout_s
    h.advance_until(lambda: len(ls.live) == 1, "a new link")
    assert ls.live[0] is not old and len(a.accepted) == 2


def test_stop_closes_every_link_and_links_no_more(h: Harness) -> None:
    a, b = h.peer(), h.peer()
    ls = h.links([a.port, b.port])
    ls.start()
    h.drive(all_up(h, ls, [a, b]), "2 links up")
    ls.stop()
    assert ls.pick() is None  # a link being closed is not handed out
    assert ls.live == []
    h.drive(lambda: len(h.downs) == 2 and not a.connected and not b.connected, "links closed")
    assert ls.live == []
    for _ in range(5):  # five backoffs' worth of fake time: no new attempt
        h.clock.advance(STEP_S)
        h.settle()
    assert [c.attempts for c in ls.connectors] == [1, 1]
    assert len(a.accepted) == 1 and len(b.accepted) == 1
    assert [c.running for c in ls.connectors] == [False, False]
