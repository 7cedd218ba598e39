"""The IM connection layer: typed protobuf messages over PDUs (the original's ``CImConn``).

An :class:`ImConnection` is the protocol of one TCP connection between TeamTalk
peers. It decodes each PDU into the message class the registry names for its
``(service_id, command_id)`` and dispatches it through a :class:`Dispatcher`, a
table keyed by command id with a default for unknown commands. It sends
messages with a header built from the message's own ids, correlates requests
and responses by ``seq`` (for clients), and keeps the link alive:

- it sends a heartbeat PDU when it has sent nothing for ``heartbeat_s``;
- it closes the connection when it has received nothing for ``timeout_s``.

On links whose policy says ``carry_budget`` (our server-to-server links) a
request's header carries its timeout as a time budget (see
:func:`~imreactor.pdu.header.budget_ms`), so the peer can drop work nobody will
wait for. A response that arrives after its request timed out is a *late
answer*: it is counted and logged as such, never mistaken for a new command, and
its seq is not reused while the peer may still send it.

Liveness is tracked with two flags per connection that the data path merely
sets; one :class:`Keepalive` timer per group of connections (not one timer per
connection) turns them into timestamps once a tick and acts on them. The
resolution is one tick (1 s by default), which is all heartbeats need, and the
data path pays one attribute store per read instead of a clock call.

Bad input never escapes this layer as an exception: an undecodable body, a
request with missing required fields or an unknown command is logged with the
peer's address and passed to :meth:`ImConnection.bad_pdu`, whose default keeps
the connection (servers override it where the policy is to close).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Generic, Self, TypeVar, cast, overload

from google.protobuf.message import DecodeError, Message

from ..logs import RateLimitedLog
from ..net.transport import Transport
from .framing import Frame, FrameError, FrameProtocol
from .header import (
    DEFAULT_MAX_PDU_BYTES,
    HEADER_LEN,
    MAX_SEQ,
    budget_field,
    budget_ms,
    encode_pdu,
)
from .registry import command_name, ids_of, message_class
from .traffic import TRAFFIC

if TYPE_CHECKING:
    from ..net.loop import EventLoop
    from ..net.timers import Timer

log = logging.getLogger(__name__)
_late_log = RateLimitedLog(log, logging.INFO)
# The process's counters, bound once: a count is one dict update.
_received, _sent, _errors = TRAFFIC.received, TRAFFIC.sent, TRAFFIC.errors

SID_OTHER = 0x0007
CID_OTHER_HEARTBEAT = 0x0701
HEARTBEAT_PDU = encode_pdu(SID_OTHER, CID_OTHER_HEARTBEAT, 0)
#: Timed-out seqs remembered per connection, so their late answers are recognised.
LATE_SEQS_KEPT = 1024


def encode_message(
    message: Message, seq: int = 0, *, partial: bool = False, reserved: int = 0
) -> bytes:
    """``message`` as one whole PDU, with the ids the registry gives its class.

    Encode once and :meth:`ImConnection.send_frame` the result to send one message
    to many connections. ``partial=True`` skips the required-field check (relays).
    """
    service_id, command_id = ids_of(message)
    body = message.SerializePartialToString() if partial else message.SerializeToString()
    return encode_pdu(service_id, command_id, seq, body, reserved)


C = TypeVar("C", bound="ImConnection")
M = TypeVar("M", bound=Message)

Handler = Callable[[C, M, int], object]
"""``handler(conn, message, seq)``: one decoded request or notification of class ``M``
on a connection of class ``C``."""

ResponseCallback = Callable[[Any, "BaseException | None"], Any]
"""``callback(message, exc)``: the response to a request, or why there is none."""

TypedResponseCallback = Callable[["M | None", "BaseException | None"], object]
"""A :data:`ResponseCallback` for requests that name their response class ``M``:
``message`` is an ``M`` when ``exc`` is None, else None."""

# A request waiting for its answer: the response class, the callback, the timeout timer.
_Pending = tuple["type[Message] | None", ResponseCallback, "Timer | None"]
#: What a connection without timed-out requests looks up seqs in (never written).
_NO_LATE: Final[dict[int, int]] = {}


@dataclass(frozen=True)
class LinkPolicy:
    """Heartbeat and timeout of one kind of link, in seconds (``None``: never).

    ``echo_heartbeat``: answer a peer's heartbeat with the same PDU (what
    msg_server does for clients) instead of relying on our own heartbeats.
    ``carry_budget``: requests carry their timeout in the header's reserved field
    (between our own servers; TeamTalk peers ignore the field).
    """

    heartbeat_s: float | None
    timeout_s: float | None
    echo_heartbeat: bool = False
    max_pdu_bytes: int = DEFAULT_MAX_PDU_BYTES
    carry_budget: bool = False


#: Between servers: heartbeat after 5 s without sending, close after 30 s of silence;
#: requests carry their time budget.
SERVER_LINK = LinkPolicy(heartbeat_s=5.0, timeout_s=30.0, carry_budget=True)
#: A client's side of its msg_server link: heartbeat every 30 s.
CLIENT_SIDE = LinkPolicy(heartbeat_s=30.0, timeout_s=120.0)


class Dispatcher(Generic[C]):
    """Message class → handler, plus a default for commands nobody registered.

    Peers dispatch on the command id alone (command ids are unique across
    services). One dispatcher is shared by every connection of one kind, whose class
    is ``C``; :meth:`register` ties each handler's message parameter to the class it
    is registered for, so handlers are type-checked against what they will get.
    """

    def __init__(self, default: Handler[C, Message] | None = None) -> None:
        # Erased to Any here: register() has checked each pairing.
        self._handlers: dict[int, Handler[C, Any]] = {}
        self.default: Handler[C, Any] | None = default

    def register(self, message: type[M], handler: Handler[C, M]) -> None:
        """Route ``message``'s command id to ``handler``; replaces an earlier one."""
        self._handlers[ids_of(message)[1]] = handler

    def on(self, message: type[M]) -> Callable[[Handler[C, M]], Handler[C, M]]:
        """Decorator form of :meth:`register`."""

        def deco(handler: Handler[C, M]) -> Handler[C, M]:
            self.register(message, handler)
            return handler

        return deco

    def get(self, command_id: int) -> Handler[C, Any] | None:
        """The handler of ``command_id``, else the default (None if there is none)."""
        return self._handlers.get(command_id, self.default)


class Keepalive:
    """One periodic timer that keeps a group of :class:`ImConnection` alive or times them out.

    Loop thread only. Connections add themselves in ``connection_made`` and
    leave in ``connection_lost``.
    """

    def __init__(self, loop: EventLoop, tick_s: float = 1.0) -> None:
        self.loop = loop
        self.tick_s = tick_s
        self._conns: set[ImConnection] = set()
        self._timer: Timer | None = None

    def __len__(self) -> int:
        return len(self._conns)

    def __iter__(self) -> Iterator[ImConnection]:
        """The connections kept now (a copy: closing one while iterating is safe)."""
        return iter(tuple(self._conns))

    def add(self, conn: ImConnection) -> None:
        now = self.loop.time()
        conn._last_recv = conn._last_send = now
        self._conns.add(conn)
        if self._timer is None:
            self._timer = self.loop.call_every(self.tick_s, self.tick)

    def discard(self, conn: ImConnection) -> None:
        self._conns.discard(conn)
        if not self._conns and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def tick(self) -> None:
        """Turn activity flags into timestamps; heartbeat idle senders; close silent peers."""
        now = self.loop.time()
        for conn in tuple(self._conns):
            if conn._recv_flag:
                conn._recv_flag = False
                conn._last_recv = now
            if conn._send_flag:
                conn._send_flag = False
                conn._last_send = now
            policy = conn.policy
            if policy.timeout_s is not None and now - conn._last_recv >= policy.timeout_s:
                log.info(
                    "%r: nothing received for %.0f s; closing", conn.conn, now - conn._last_recv
                )
                self.discard(conn)
                # Abort, not close: a peer silent this long will not answer a FIN
                # either, and its owner should forget it now, not after a linger.
                conn.conn.abort(TimeoutError(f"nothing received for {policy.timeout_s:g} s"))
                continue
            if policy.heartbeat_s is not None and now - conn._last_send >= policy.heartbeat_s:
                conn.conn.write(HEARTBEAT_PDU)
                conn._last_send = now


class ImConnection(FrameProtocol):
    """The protocol of one TeamTalk link (client, server, or server-to-server).

    Contract for subclasses: override :meth:`on_connected`, :meth:`on_closed`,
    :meth:`bad_pdu` as needed; never override ``data_received``. Handlers get
    ``(conn, message, seq)`` where ``conn`` is this object. Loop thread only.

    Slotted, as :class:`FrameProtocol` is: a server holds one per client, so an idle
    client costs what these attributes cost and no dict; the request tables are made
    on the first request. Subclasses without ``__slots__`` get a ``__dict__`` as usual.
    """

    __slots__ = (
        "_last_recv",
        "_last_send",
        "_late",
        "_next_seq",
        "_pending",
        "_recv_flag",
        "_send_flag",
        "bad_pdus",
        "current_deadline",
        "dispatcher",
        "handler_errors",
        "keepalive",
        "late_answers",
        "policy",
    )

    def __init__(
        self,
        dispatcher: Dispatcher[Self],
        keepalive: Keepalive | None = None,
        policy: LinkPolicy = SERVER_LINK,
    ) -> None:
        super().__init__(policy.max_pdu_bytes)
        # Checked against Self above; stored erased, since handlers get ``self``.
        self.dispatcher: Dispatcher[Any] = dispatcher
        self.keepalive = keepalive
        self.policy = policy
        self._recv_flag = False
        self._send_flag = False
        self._last_recv = 0.0
        self._last_send = 0.0
        self._next_seq = 0
        # Both None until the first request (most client connections never make one).
        self._pending: dict[int, _Pending] | None = None
        # Timed-out seq -> the command id its answer would have (0: any), oldest first.
        self._late: dict[int, int] | None = None
        #: Answers that arrived after their request had timed out (logged, then dropped).
        self.late_answers = 0
        #: While a handler runs, the loop-clock time after which the peer no longer waits
        #: for the answer to the PDU it handles; None when that PDU carries no budget.
        self.current_deadline: float | None = None
        #: PDUs refused (undecodable, missing required fields, unknown command).
        self.bad_pdus = 0
        #: Requests whose handler raised (logged; the connection stays up).
        self.handler_errors = 0

    # -- life cycle ------------------------------------------------------------------------

    def connection_made(self, conn: Transport) -> None:
        super().connection_made(conn)
        if self.keepalive is not None:
            self.keepalive.add(self)
        self.on_connected()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.keepalive is not None:
            self.keepalive.discard(self)
        pending, self._pending = self._pending or {}, None
        lost = ConnectionError(f"connection closed before the response ({exc or 'closed'})")
        for _cls, callback, timer in pending.values():
            if timer is not None:
                timer.cancel()
            _answer(callback, None, lost)
        self.on_closed(exc)

    def keepalive_received(self) -> None:
        # A WebSocket pong: the peer is alive even if its page is too asleep to send a
        # heartbeat PDU; it counts against timeout_s like a PDU would.
        self._recv_flag = True

    @property
    def pending_requests(self) -> int:
        """Requests sent with :meth:`request` whose callback has not run yet."""
        return len(self._pending) if self._pending is not None else 0

    def on_connected(self) -> None:
        """Hook: the link is up."""

    def on_closed(self, exc: BaseException | None) -> None:
        """Hook: the link is down (exactly once, after ``on_connected``)."""

    # -- sending ---------------------------------------------------------------------------

    def send(self, message: Message, seq: int = 0, *, partial: bool = False) -> None:
        """Send ``message`` with the ids the registry gives its class.

        ``partial=True`` serializes without checking required fields: for relaying
        a peer's message unchanged (unknown fields are kept either way).
        """
        self.send_frame(encode_message(message, seq, partial=partial))

    def send_frame(self, frame: Frame) -> None:
        """Send a whole PDU as received (relaying without re-encoding)."""
        self._send_flag = True
        _sent[frame[10] << 8 | frame[11]] += 1  # the header's command id
        self.conn.write(frame)

    @overload
    def request(
        self,
        message: Message,
        callback: TypedResponseCallback[M],
        *,
        timeout_s: float | None = 10.0,
        response: type[M],
    ) -> int: ...

    @overload
    def request(
        self,
        message: Message,
        callback: ResponseCallback,
        *,
        timeout_s: float | None = 10.0,
        response: None = None,
    ) -> int: ...

    def request(
        self,
        message: Message,
        callback: ResponseCallback,
        *,
        timeout_s: float | None = 10.0,
        response: type[Message] | None = None,
    ) -> int:
        """Send ``message`` with a fresh seq; ``callback(response, exc)`` gets the answer.

        The answer is the next PDU that carries this seq (``response``, if given,
        is the class it must have; anything else fails the request). The
        callback runs exactly once: with the response, with ``TimeoutError``
        after ``timeout_s``, or with ``ConnectionError`` if the link closes.
        Returns the seq used.
        """
        if self._pending is None:
            self._pending = {}
        seq = self._allocate_seq(self._pending)
        # Sent before it is registered: a message that cannot be serialized raises
        # here and leaves no pending entry whose callback would also run later.
        # (A write never delivers input, so no answer can arrive first.)
        reserved = budget_field(timeout_s) if self.policy.carry_budget else 0
        self.send_frame(encode_message(message, seq, reserved=reserved))
        timer = None
        if timeout_s is not None:
            timer = self.conn.loop.call_later(timeout_s, self._request_timed_out, seq, timeout_s)
        self._pending[seq] = (response, callback, timer)
        return seq

    def _allocate_seq(self, pending: dict[int, _Pending]) -> int:
        # seq 0 is what server pushes carry, so requests use 1..65535, skipping
        # those still waiting for an answer and those whose late answer may come.
        late = self._late if self._late is not None else _NO_LATE
        if len(pending) >= MAX_SEQ:
            raise RuntimeError("65535 requests outstanding on one connection")
        if len(pending) + len(late) >= MAX_SEQ:
            del late[next(iter(late))]  # the oldest late answer is the least likely to come
        seq = self._next_seq
        while True:
            seq = seq % MAX_SEQ + 1
            if seq not in pending and seq not in late:
                self._next_seq = seq
                return seq

    def _request_timed_out(self, seq: int, timeout_s: float) -> None:
        entry = self._pending.pop(seq, None) if self._pending is not None else None
        if entry is not None:
            late = self._late
            if late is None:
                late = self._late = {}
            if len(late) >= LATE_SEQS_KEPT:
                del late[next(iter(late))]
            expected = entry[0]
            late[seq] = ids_of(expected)[1] if expected is not None else 0
            _answer(entry[1], None, TimeoutError(f"no response within {timeout_s:g} s (seq {seq})"))

    # -- receiving -------------------------------------------------------------------------

    def frame_received(self, service_id: int, command_id: int, seq: int, frame: Frame) -> None:
        self._recv_flag = True
        _received[command_id] += 1
        if command_id == CID_OTHER_HEARTBEAT:
            if self.policy.echo_heartbeat:
                self.send_frame(frame)
            return
        if seq and self._pending:
            entry = self._pending.pop(seq, None)
            if entry is not None:
                self._deliver_response(entry, service_id, command_id, seq, frame)
                return
        if seq and self._late and self._late.get(seq) in (0, command_id):
            del self._late[seq]
            self.late_answers += 1
            _errors["late_answer"] += 1
            # A peer that fell behind answers a whole backlog late: one line per window.
            name = command_name(command_id)
            _late_log.log(
                self.conn.loop,
                f"late answer {name}",
                "%r: late answer %s (seq %d) after its request timed out; dropped",
                self.conn,
                name,
                seq,
            )
            return
        handler = self.dispatcher.get(command_id)
        if handler is None:
            self.bad_pdu(
                service_id,
                command_id,
                seq,
                f"unknown command 0x{command_id:04x}",
                "unknown_command",
            )
            return
        message = self.decode(service_id, command_id, seq, frame)
        if message is None:
            return
        if self.policy.carry_budget:
            budget = budget_ms(frame)
            self.current_deadline = self.conn.loop.time() + budget / 1000 if budget else None
        try:
            handler(self, message, seq)
        except Exception:
            # One request failed: log it with its command and keep serving the
            # link (a server-to-server link carries everyone's traffic).
            self.handler_errors += 1
            _errors["handler_failed"] += 1
            log.exception(
                "%r: handler for command 0x%04x seq %d failed", self.conn, command_id, seq
            )

    def decode(self, service_id: int, command_id: int, seq: int, frame: Frame) -> Any:
        """Parse the body of ``frame``; None (after :meth:`bad_pdu`) if it is not valid."""
        cls = message_class(service_id, command_id)
        if cls is None:
            self.bad_pdu(
                service_id,
                command_id,
                seq,
                f"no message type for 0x{command_id:04x}",
                "unknown_command",
            )
            return None
        message = cls()
        try:
            # A memoryview spares copying the body; the C parser takes any buffer.
            message.ParseFromString(cast(bytes, memoryview(frame)[HEADER_LEN:]))
        except DecodeError as exc:
            self.bad_pdu(
                service_id, command_id, seq, f"undecodable {cls.__name__}: {exc}", "undecodable"
            )
            return None
        if not message.IsInitialized():
            missing = ", ".join(message.FindInitializationErrors())  # type: ignore[attr-defined]
            self.bad_pdu(
                service_id,
                command_id,
                seq,
                f"{cls.__name__} lacks required fields: {missing}",
                "missing_fields",
            )
            return None
        return message

    def _deliver_response(
        self,
        entry: tuple[type[Message] | None, ResponseCallback, Timer | None],
        service_id: int,
        command_id: int,
        seq: int,
        frame: Frame,
    ) -> None:
        expected, callback, timer = entry
        if timer is not None:
            timer.cancel()
        message = self.decode(service_id, command_id, seq, frame)
        if message is None:
            _answer(callback, None, ValueError(f"invalid response to seq {seq}"))
        elif expected is not None and not isinstance(message, expected):
            wrong = f"expected {expected.__name__}, got {type(message).__name__}"
            _answer(callback, None, ValueError(wrong))
        else:
            _answer(callback, message, None)

    def frame_error(self, error: FrameError) -> None:
        _errors["bad_frame"] += 1
        super().frame_error(error)

    def bad_pdu(
        self, service_id: int, command_id: int, seq: int, reason: str, kind: str = "refused"
    ) -> None:
        """A PDU that cannot be served arrived: log it and count it as ``kind`` (one of
        :data:`~imreactor.pdu.traffic.ERROR_KINDS`). Default: keep the connection."""
        self.bad_pdus += 1
        _errors[kind] += 1
        log.warning(
            "%r: refused PDU service 0x%04x command 0x%04x seq %d: %s",
            self.conn,
            service_id,
            command_id,
            seq,
            reason,
        )


def _answer(callback: ResponseCallback, message: Message | None, exc: BaseException | None) -> None:
    """Call one request's callback; its failure is the requester's bug, logged, and never
    the link's: the connection and every other pending request go on."""
    try:
        callback(message, exc)
    except Exception:
        log.exception("response callback %r failed", callback)
