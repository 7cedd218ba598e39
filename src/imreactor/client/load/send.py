"""The sending phase of a run: :class:`Sending`.

Each sender (:class:`~.records.Sender`: the desktop connection of a pair's first user,
with ``duplex`` of both, or of a group's first ``senders`` members) sends
``IMMsgData`` to its conversation, keeping ``in_flight`` messages unacknowledged at
most, optionally paced to ``rate`` messages/s overall (credit every
:data:`PACE_TICK_S`, at most :data:`PACE_BURST_S` of it banked), until
``duration_s`` has passed or ``count`` messages were sent. Every answer is checked:
the ack must name the sender, its session and a msg_id (with ``echo``: the echoed
PDU must be the one sent, byte for byte).

Loop thread only. After every answer, and when the time is up, ``settled()`` runs:
the run sees whether the phase is over.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ...net import ConnState, EventLoop, Timer
from ...pdu.proto import im_message_pb2 as msg_pb
from .options import DEFAULT_DURATION_S, LoadOptions
from .records import READY, Sender, Sent
from .verify import ErrorSink, Key, Verifier

#: Pacing tick with ``--rate``, and the most credit a stall may bank (as seconds of rate).
PACE_TICK_S = 0.005
PACE_BURST_S = 0.1


class Sending:
    """The senders of one run and what they sent (module docstring).

    :meth:`add` each sender, then :meth:`start`. ``active`` until the time or count
    is up or :meth:`stop`; ``t_send_start`` is when it started, ``t_send_end`` the
    last good ack (or when it was :meth:`over`, without one). ``closing()`` says the
    run is shutting down: answers then count for nothing.
    """

    def __init__(
        self,
        loop: EventLoop,
        options: LoadOptions,
        verifier: Verifier,
        info: dict[str, int],
        error: ErrorSink,
        *,
        closing: Callable[[], bool],
        settled: Callable[[], None],
    ) -> None:
        self.loop = loop
        self.options = options
        self._echo = options.echo is not None
        self._verifier = verifier
        self._info = info
        self._error = error
        self._closing = closing
        self._settled = settled
        self.senders: list[Sender] = []
        #: The sender of each sending endpoint, by endpoint index.
        self.sender_of: dict[int, Sender] = {}
        self.sent_total = 0
        self.acked = 0
        self.outstanding = 0
        self.active = False
        self.ack_samples: list[float] = []
        self.t_send_start = self.t_send_end = 0.0
        self._ready: deque[Sender] = deque()
        self._credit = 0.0
        self._last_pace = 0.0
        self._timers: list[Timer] = []

    def add(self, sender: Sender) -> None:
        self.senders.append(sender)
        self.sender_of[sender.endpoint.index] = sender

    def start(self) -> bool:
        """Begin sending; False (and nothing begun) without senders."""
        o = self.options
        self.t_send_start = self._last_pace = self.loop.time()
        if not self.senders:
            return False
        self.active = True
        if o.duration_s is not None or o.count is None:
            duration = o.duration_s if o.duration_s is not None else DEFAULT_DURATION_S
            self._timers.append(self.loop.call_later(duration, self._time_up))
        if o.rate is not None:
            self._ready.extend(self.senders)
            for sender in self.senders:
                sender.queued = True
            self._timers.append(self.loop.call_every(PACE_TICK_S, self._pace, first_s=0.0))
        else:
            for sender in self.senders:
                self._fill(sender)
        return True

    def may_send_more(self) -> bool:
        """Whether any sender may still send."""
        return self.active and any(self._may_send(s) for s in self.senders)

    def stop(self) -> None:
        """Send nothing more; what is in flight still gets its answer."""
        self.active = False

    def over(self) -> None:
        """Nothing more will be sent: the sending time ends at the last ack (now, if none)."""
        self.active = False
        if self.t_send_end == 0.0:
            self.t_send_end = self.loop.time()

    def close(self) -> None:
        """The run is finished: stop, and no more ticks."""
        self.active = False
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()

    def resume(self, endpoint_index: int) -> None:
        """A sender back online sends again (its rate share, or its in-flight window)."""
        sender = self.sender_of.get(endpoint_index)
        if sender is None:
            return
        self._again(sender)

    def _again(self, sender: Sender) -> None:
        """``sender`` may send once more: at once, or at its next turn of the pace."""
        if self.options.rate is None:
            self._fill(sender)
        elif not sender.queued and self._may_send(sender):
            self._ready.append(sender)
            sender.queued = True

    def _may_send(self, sender: Sender) -> bool:
        # The connection's own state, not only the endpoint's: when a connection
        # closes, its pending requests fail (and land here) before its close
        # callback marks the endpoint.
        conn = sender.endpoint.conn
        return (
            self.active
            and sender.outstanding < self.options.in_flight
            and sender.endpoint.state == READY
            and conn is not None
            and conn.state is ConnState.CONNECTED
        )

    def _fill(self, sender: Sender) -> None:
        while self._may_send(sender):
            self._send_one(sender)

    def _pace(self) -> None:
        now = self.loop.time()
        rate = self.options.rate
        assert rate is not None
        self._credit = min(
            self._credit + (now - self._last_pace) * rate, max(1.0, rate * PACE_BURST_S)
        )
        self._last_pace = now
        ready = self._ready
        while self._credit >= 1.0 and ready:
            sender = ready.popleft()
            sender.queued = False
            if not self._may_send(sender):
                continue
            self._credit -= 1.0
            self._send_one(sender)
            if self._may_send(sender):
                ready.append(sender)
                sender.queued = True

    def _send_one(self, sender: Sender) -> None:
        ep = sender.endpoint
        seq = sender.next_seq
        sender.next_seq += 1
        key = (ep.index, seq)
        msg = msg_pb.IMMsgData(
            from_user_id=ep.user.user_id,
            to_session_id=sender.session_id,
            msg_id=0,
            create_time=int(time.time()),
            msg_type=sender.msg_type,
            msg_data=self._verifier.body(ep.index, seq),
        )
        record = self._verifier.sending(key, self.loop.time())
        sender.outstanding += 1
        self.outstanding += 1
        self.sent_total += 1
        if self.options.count is not None and self.sent_total >= self.options.count:
            self.active = False
        assert ep.session is not None
        ep.session.request(
            msg,
            lambda rsp, exc: self._acked(sender, key, record, rsp, exc),
            timeout_s=self.options.ack_timeout_s,
            response=msg_pb.IMMsgData if self._echo else msg_pb.IMMsgDataAck,
        )

    def _acked(
        self,
        sender: Sender,
        key: Key,
        record: Sent,
        rsp: Any,
        exc: BaseException | None,
    ) -> None:
        sender.outstanding -= 1
        self.outstanding -= 1
        if self._closing():
            return
        ep = sender.endpoint
        conv = sender.conv
        if exc is not None and self.options.reconnect and isinstance(exc, ConnectionError):
            # Its connection dropped: whether it was stored is unknown, as for any
            # client; it may still arrive (counted as unacked_delivered).
            self._verifier.unacked(conv)
            self._info["unacked_on_reconnect"] = self._info.get("unacked_on_reconnect", 0) + 1
        elif exc is not None:
            self._verifier.unacked(conv)
            kind = (
                "timeouts"
                if isinstance(exc, TimeoutError)
                else "unacked_on_close"
                if isinstance(exc, ConnectionError)
                else "bad_acks"
            )
            self._error(kind, f"{ep.user.name} message {key[1]}: {exc}")
        elif self._echo:
            if rsp.msg_data != self._verifier.body(*key):
                self._error("bad_acks", f"connection {key[0]} round trip {key[1]}: bytes differ")
            else:
                self._ack_ok(record)
        elif (
            rsp.msg_id == 0
            or rsp.user_id != ep.user.user_id
            or rsp.session_id != sender.session_id
            or rsp.session_type != sender.session_type
        ):
            self._verifier.unacked(conv)
            self._error(
                "bad_acks",
                f"{ep.user.name} message {key[1]} to {sender.session_id}: ack user "
                f"{rsp.user_id} session {rsp.session_id} type {rsp.session_type} "
                f"msg_id {rsp.msg_id}",
            )
        else:
            self._ack_ok(record)
            self._verifier.acked(sender, key, record, rsp.msg_id)
        self._again(sender)
        self._settled()

    def _ack_ok(self, record: Sent) -> None:
        now = self.loop.time()
        record.t_ack = now
        self.t_send_end = now
        self.acked += 1
        self.ack_samples.append(now - record.t_sent)

    def _time_up(self) -> None:
        self.active = False
        self._settled()
