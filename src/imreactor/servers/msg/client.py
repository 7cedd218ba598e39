"""msg_server's side of one client connection, and the connections of one user.

A :class:`ClientConn` enforces what holds before login (only ``IMLoginReq`` and
heartbeats; a login deadline), counts bad PDUs, rate-limits messages and names itself
in ``attach_data`` by a handle that is never reused. What it does with requests is the
server's (:mod:`.sessions`, :mod:`.presence`, :mod:`.delivery`). Loop thread only.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ...net import Timer
from ...pdu.imconn import ImConnection
from ...pdu.kinds import device_class
from ...pdu.proto import im_login_pb2 as login_pb
from ...pdu.proto import im_other_pb2 as other_pb
from ...pdu.registry import ids_of
from .ordering import Sequencer

if TYPE_CHECKING:
    from .server import MsgServer

log = logging.getLogger(__name__)

#: Undecodable or incomplete PDUs tolerated from a logged-in client before it is closed.
MAX_BAD_PDUS = 10
_ATTACH = struct.Struct(">III")
_ATTACH_TYPE_HANDLE = 1
_BEFORE_LOGIN = frozenset({ids_of(login_pb.IMLoginReq)[1], ids_of(other_pb.IMHeartBeat)[1]})


def host_of(conn: ImConnection) -> str:
    """The client's IP address as text ("" when the transport has none)."""
    peer = conn.conn.remote_address
    return str(peer[0]) if isinstance(peer, tuple) and peer else ""


class ClientConn(ImConnection):
    """msg_server's side of one client connection.

    Slotted and lean, because a server holds tens of thousands of idle ones: what a
    logged-in connection keeps is its ids and counters; the user's profile is not kept
    (login answers it and forgets it), and the per-connection sequencer is made when
    the first relayed message or ack needs it.
    """

    __slots__ = (
        "_login_timer",
        "_rate_timer",
        "_sequencer",
        "_tokens",
        "_tokens_at",
        "client_type",
        "handle",
        "kicked",
        "login_pending",
        "server",
        "slowed",
        "user_id",
        "watching",
    )

    def __init__(self, server: MsgServer) -> None:
        super().__init__(server.client_dispatch, server.keepalive, server.client_policy)
        self.handle = next(server.handles)  #: never reused, unlike fds: safe in attach_data
        self.server = server
        self.user_id = 0
        self.client_type = 0
        self.login_pending = False
        self.kicked = False
        self._login_timer: Timer | None = None
        self._tokens = float(server.config.msg_burst)
        self._tokens_at = 0.0
        self._rate_timer: Timer | None = None
        #: Times reading was paused because the connection sent above its rate.
        self.slowed = 0
        #: The users whose presence this connection subscribed to; None until it first
        #: does, so that a connection that never asks costs one slot.
        self.watching: set[int] | None = None
        self._sequencer: Sequencer | None = None

    @property
    def logged_in(self) -> bool:
        return self.user_id != 0

    @property
    def sequencer(self) -> Sequencer | None:
        """What orders this connection's relayed messages and acks; None with one msg_server
        (whose deliveries are in order already). Made on first use."""
        if self._sequencer is None and self.server.ordered:
            self._sequencer = Sequencer(self.server.loop, self.server.config.reorder_wait_s)
        return self._sequencer

    @property
    def answering(self) -> bool:
        """True while this connection is owed an answer that is on its way: a login
        (db_proxy or the throttle has it) or an ack its sequencer holds."""
        return self.login_pending or (self._sequencer is not None and self._sequencer.holding)

    def attach(self) -> bytes:
        """The original's 12-byte attach_data naming this connection."""
        return _ATTACH.pack(_ATTACH_TYPE_HANDLE, self.handle, 0)

    def on_connected(self) -> None:
        self.server.clients[self.handle] = self
        self._login_timer = self.server.loop.call_later(
            self.server.config.login_timeout_s, self._login_deadline
        )

    def cancel_login_deadline(self) -> None:
        """Logged in: the login deadline no longer applies."""
        if self._login_timer is not None:
            self._login_timer.cancel()
            self._login_timer = None

    def _login_deadline(self) -> None:
        self._login_timer = None
        if not self.logged_in:
            log.info("%r: not logged in within the deadline; closing", self.conn)
            self.conn.close()

    def on_closed(self, exc: BaseException | None) -> None:
        if self._rate_timer is not None:
            self._rate_timer.cancel()
            self._rate_timer = None
        if self._sequencer is not None:
            self._sequencer.close()
        self.cancel_login_deadline()
        self.server.clients.pop(self.handle, None)
        self.server.presence.unwatch(self)
        if self.logged_in:
            self.server.sessions.user_gone(self)

    def frame_received(self, service_id: int, command_id: int, seq: int, frame: Any) -> None:
        if not self.logged_in and command_id not in _BEFORE_LOGIN:
            log.warning(
                "%r: command 0x%04x before login; closing the connection", self.conn, command_id
            )
            self.conn.abort()
            return
        super().frame_received(service_id, command_id, seq, frame)

    def bad_pdu(
        self, service_id: int, command_id: int, seq: int, reason: str, kind: str = "refused"
    ) -> None:
        super().bad_pdu(service_id, command_id, seq, reason, kind)
        if not self.logged_in or self.bad_pdus > MAX_BAD_PDUS:
            self.conn.abort()

    def take_token(self) -> bool:
        """Count one message against the token bucket (``msg_rate_per_s`` sustained,
        ``msg_burst`` at once); False if the connection floods and must be closed.

        A message above the rate is still served, never dropped: the bucket goes into
        debt and reading pauses until the debt is paid back at the rate, so the kernel
        buffers and TCP slows the sender. Only what one read brought in can add to the
        debt while paused; a debt beyond ``msg_burst`` (a client that writes without
        waiting for acks, far above the rate) is flooding.
        """
        config = self.server.config
        self._refill()
        self._tokens -= 1.0
        if self._tokens >= 0.0:
            return True
        if self._tokens < -config.msg_burst:
            return False
        if self._rate_timer is None:
            self.slowed += 1
            self.server.stats.slowed.inc()
            self.conn.pause_reading()
            self._wait_for_repayment()
        return True

    def _wait_for_repayment(self) -> None:
        rate = self.server.config.msg_rate_per_s
        self._rate_timer = self.server.loop.call_later(-self._tokens / rate, self._repaid)

    def _refill(self) -> None:
        config = self.server.config
        now = self.server.loop.time()
        self._tokens = min(
            float(config.msg_burst), self._tokens + (now - self._tokens_at) * config.msg_rate_per_s
        )
        self._tokens_at = now

    def _repaid(self) -> None:
        self._refill()
        if self._tokens < 0.0:  # messages of the same read came after the pause began
            self._wait_for_repayment()
            return
        self._rate_timer = None
        if not self.server.draining:  # a draining server reads no more requests
            self.conn.resume_reading()


class UserConns:
    """The connections of one user on this server, oldest first.

    A handful at most: as many per device class (:func:`~imreactor.pdu.kinds.device_class`)
    as ``sessions_<class>`` allows. Iterating is safe while sending: a transport never
    reports a close from inside ``write``.
    """

    __slots__ = ("conns",)

    def __init__(self) -> None:
        self.conns: list[ClientConn] = []

    def __iter__(self) -> Iterator[ClientConn]:
        return iter(self.conns)

    def __len__(self) -> int:
        return len(self.conns)

    def of_class(self, device: str) -> list[ClientConn]:
        """This user's connections of one device class, oldest first."""
        return [c for c in self.conns if device_class(c.client_type) == device]

    def add(self, conn: ClientConn) -> None:
        self.conns.append(conn)

    def remove(self, conn: ClientConn) -> bool:
        """Forget ``conn``; False if it was not one of them."""
        try:
            self.conns.remove(conn)
        except ValueError:
            return False
        return True
