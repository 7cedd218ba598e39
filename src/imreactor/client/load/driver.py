"""One load run on one loop: :class:`LoadRun`, the state machine of its phases.

One :class:`~imreactor.client.session.ClientSession` per connection. A run has
four phases:

1. **login**: every connection logs in as ``load<i>`` (at most
   ``login_concurrency`` logins at a time), the way :class:`~.login.Logins` says:
   through login_server, or pinned (with ``--msg-servers A,B,...`` and two or more
   entries the two users of a pair are always on different servers).
2. **send**: users ``load<2p>`` and ``load<2p+1>`` form pair ``p``. The
   desktop connection of the first (and with ``duplex`` also of the second)
   sends 1:1 ``IMMsgData`` to the other, keeping ``in_flight`` messages
   unacknowledged at most, optionally paced to ``rate`` messages/s overall,
   until ``duration_s`` has passed or ``count`` messages were sent. A body
   reads ``<run id>:<sending connection>:<sequence number>:`` and padding.

   With ``group_size`` M the users are ``load0..load<M-1>`` instead, and no
   pairs: once all are logged in, ``load0`` creates a temporary group of all
   of them (``IMGroupCreateReq``; the answer must list exactly them), then the
   desktop connections of the first ``senders`` members send group messages
   (``msg_type`` 0x11) to it, with the same in-flight, rate, duration and
   count rules.
3. **drain**: once every message is acknowledged or timed out, wait (at most
   ``drain_s``) until every expected delivery has arrived.
4. **verify** (:meth:`LoadRun.report`): what arrived where against what was
   acked, by the run's :class:`~.verify.Verifier` (whose docstring has the rules).

With ``reconnect`` (1:1 runs), a connection that drops is not an error: it logs in
again and catches up from history (:class:`~.reconnect.Reconnects`), and the run
ends only once every dropped connection is back or has given up.

With ``echo`` set, the same connections and senders run against a PDU echo
server instead (no login; the "ack" is the echoed PDU, checked byte for
byte): a reference for what the client side and the reactor cost.
"""

from __future__ import annotations

import logging
import os
import resource
import time
from collections import deque
from collections.abc import Callable
from typing import IO, Any

from ...net import ConnState, EventLoop, Timer
from ...pdu.kinds import GROUP_MSG_TYPES
from ...pdu.proto import im_base_define_pb2 as base
from ...pdu.proto import im_group_pb2 as group_pb
from ...pdu.proto import im_login_pb2 as login_pb
from ...pdu.proto import im_message_pb2 as msg_pb
from .login import Logins
from .options import DEFAULT_DURATION_S, ERROR_KINDS, LoadOptions
from .reconnect import Reconnects
from .records import (
    FAILED,
    READY,
    Endpoint,
    Sender,
    Sent,
    User,
)
from .report import MAX_PROBLEMS, Latency, LoadReport
from .verify import Deliveries, Verifier

log = logging.getLogger(__name__)

#: Pacing tick with ``--rate``, and the most credit a stall may bank (as seconds of rate).
PACE_TICK_S = 0.005
PACE_BURST_S = 0.1


class LoadRun:
    """One run on ``loop``: logins, sending, draining, then :meth:`report`.

    Loop thread only. :meth:`start` begins; the run calls ``loop.stop()`` when it
    is finished (or :meth:`interrupt` ends it early). :meth:`shutdown` closes
    every connection afterwards.
    """

    def __init__(
        self,
        loop: EventLoop,
        options: LoadOptions,
        *,
        progress: IO[str] | None = None,
    ) -> None:
        options.check()
        self.loop = loop
        self.options = options
        self.echo = options.echo is not None
        self._progress_out = progress
        self._progress_tty = progress is not None and progress.isatty()
        self._run_id = os.urandom(4).hex().encode()
        self.users = [
            User(options.first_user + i, name) for i, name in enumerate(options.user_names())
        ]
        #: Called once every login has finished, with what starts the sending phase
        #: (``None``: start at once); a ``--processes`` child waits for its parent here.
        self.before_sending: Callable[[Callable[[], None]], None] | None = None
        self.endpoints: list[Endpoint] = []
        types = [base.CLIENT_TYPE_WINDOWS, base.CLIENT_TYPE_ANDROID][: options.devices]
        for user in self.users:
            for client_type in types:
                ep = Endpoint(len(self.endpoints), user, client_type)
                user.endpoints.append(ep)
                self.endpoints.append(ep)
        self.errors = dict.fromkeys(ERROR_KINDS, 0)
        self.info = {"unacked_delivered": 0, "foreign_messages": 0, "other_pushes": 0}
        self.problems: list[str] = []
        #: What was sent, acked and received, and the verification of it.
        self.verifier = Verifier(self._run_id, options.size, self.endpoints, self.info, self._error)
        self._logins = Logins(
            loop,
            options,
            push=self._push,
            logged_in=self._logged_in,
            failed=self._fail,
            dropped=self._dropped,
        )
        self.finished = False
        self._login_queue: deque[Endpoint] = deque()
        self._logins_active = 0
        self._logins_done = 0
        self.logins_ok = 0
        self.t_start = self.t_logins_done = 0.0
        self.t_send_start = self.t_send_end = 0.0
        self.group_id = 0
        self.group_members: list[User] = []
        self.senders: list[Sender] = []
        self._sender_of: dict[int, Sender] = {}
        self.sent_total = 0
        self.acked = 0
        self.outstanding = 0
        self._sending = False
        self._draining = False
        self.ack_samples: list[float] = []
        self._ready: deque[Sender] = deque()
        self._credit = 0.0
        self._last_pace = 0.0
        self._timers: list[Timer] = []
        self._last_progress = (0.0, 0)
        self._cpu_start = _cpu_s()
        self._report: LoadReport | None = None
        #: With ``reconnect``: the endpoints dropped, each until it is back.
        self._reconnects = Reconnects(
            loop, options, self._logins, self.verifier, self._error, back=self._back
        )
        self._drain_late = False
        #: Filled by :meth:`report`: each verified delivery's latency, and the last one's time.
        self.delivery_samples: list[float] = []
        self.t_last_delivery = 0.0

    @property
    def login_retries(self) -> int:
        """Logins tried again after a failure that may pass."""
        return self._logins.retries

    @property
    def reconnects(self) -> int:
        """Connections dropped and logged in again (with ``reconnect``)."""
        return self._reconnects.count

    @property
    def caught_up(self) -> int:
        """Messages received from history after a reconnect."""
        return self._reconnects.caught_up

    @property
    def sent(self) -> dict[tuple[int, int], Sent]:
        """Each message sent, by (sending endpoint, seq)."""
        return self.verifier.sent

    # -- problems ------------------------------------------------------------------------

    def _error(self, kind: str, text: str, n: int = 1) -> None:
        self.errors[kind] += n
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(f"{kind}: {text}")

    # -- phase 1: logins -----------------------------------------------------------------

    def start(self) -> None:
        """Begin the run (loop thread)."""
        self.t_start = self.loop.time()
        self._last_progress = (self.t_start, 0)
        self._login_queue.extend(self.endpoints)
        if self._progress_out is not None:
            self._timers.append(
                self.loop.call_every(0.5 if self._progress_tty else 5.0, self._progress)
            )
        self._start_logins()

    def _start_logins(self) -> None:
        while self._login_queue and self._logins_active < self.options.login_concurrency:
            ep = self._login_queue.popleft()
            self._logins_active += 1
            ep.first_try = self.loop.time()
            self._logins.attempt(ep)

    def _fail(self, ep: Endpoint, kind: str, why: str) -> None:
        ep.state = FAILED
        self._error(kind, why)
        if ep.lost_at:
            self._reconnects.gave_up(ep)
        else:
            self._login_finished()

    def _logged_in(self, ep: Endpoint) -> None:
        ep.state = READY
        if ep.lost_at:
            self._resume(ep)
            self._reconnects.logged_in(ep)
            return
        self.logins_ok += 1
        self._login_finished()

    def _login_finished(self) -> None:
        self._logins_active -= 1
        self._logins_done += 1
        if self._logins_done == len(self.endpoints):
            self.t_logins_done = self.loop.time()
            if self.options.group_size is not None:
                self._create_group()
            elif self.before_sending is not None:
                self.before_sending(self._start_sending)
            else:
                self._start_sending()
        else:
            self._start_logins()

    def _dropped(self, ep: Endpoint, exc: BaseException | None) -> None:
        """The connection of logged-in ``ep`` closed: reconnect, or count a disconnect."""
        if self.options.reconnect and not ep.kicked:
            self._reconnects.dropped(ep)
        else:
            ep.state = FAILED
            if not ep.kicked:
                self._error("disconnects", f"{ep.user.name}: connection closed ({exc or 'EOF'})")
            self._check_done()

    # -- reconnects ----------------------------------------------------------------------

    def _resume(self, ep: Endpoint) -> None:
        """A sender back online sends again (its rate share, or its in-flight window)."""
        sender = self._sender_of.get(ep.index)
        if sender is None:
            return
        if self.options.rate is None:
            self._fill(sender)
        elif not sender.queued and self._may_send(sender):
            self._ready.append(sender)
            sender.queued = True

    def _back(self) -> None:
        """A dropped connection is back (or gave up): the run may end once every drop is."""
        if (
            self._draining
            and not self._reconnects.lost
            and (not self.verifier.awaiting or self._drain_late)
        ):
            self._finish()
        self._check_done()

    # -- phase 2: sending ----------------------------------------------------------------

    def _create_group(self) -> None:
        """Have the first user create the group of every user logged in; then send."""
        creator = self.users[0].endpoints[0]
        members = [u for u in self.users if u.user_id]
        session = creator.session
        if creator.state != READY or session is None:
            self._error("group_failures", f"{creator.user.name} is not logged in: no group")
            self._finish()
            return
        wanted = sorted(u.user_id for u in members)
        req = group_pb.IMGroupCreateReq(
            user_id=creator.user.user_id,
            group_type=base.GROUP_TYPE_TMP,
            group_name=f"load-{self._run_id.decode()}",
            group_avatar="",
            member_id_list=[u.user_id for u in members if u is not creator.user],
        )

        def answered(rsp: Any, exc: BaseException | None) -> None:
            if self._logins.closing or self.finished:
                return
            if exc is not None:
                self._error("group_failures", f"{creator.user.name}: group create: {exc}")
            elif rsp.result_code != 0 or rsp.group_id == 0:
                self._error(
                    "group_failures",
                    f"group create refused: result {rsp.result_code}, group {rsp.group_id}",
                )
            elif sorted(rsp.user_id_list) != wanted:
                self._error(
                    "group_failures",
                    f"group {rsp.group_id} has members {sorted(rsp.user_id_list)}, "
                    f"asked for {wanted}",
                )
            else:
                self.group_id = rsp.group_id
                self.group_members = members
                self._start_sending()
                return
            self._finish()

        session.request(
            req, answered, timeout_s=self.options.ack_timeout_s, response=group_pb.IMGroupCreateRsp
        )

    def _add_sender(self, sender: Sender) -> None:
        self.senders.append(sender)
        self._sender_of[sender.endpoint.index] = sender

    def _start_sending(self) -> None:
        o = self.options
        if self.group_id:
            for user in self.users[: o.group_senders]:
                ep = user.endpoints[0]
                if ep.state == READY:
                    self._add_sender(Sender(ep, self.group_id, self.group_members, True))
        for p in range(o.pair_count):
            a, b = self.users[2 * p], self.users[2 * p + 1]
            for s, r in [(a, b), (b, a)] if o.duplex else [(a, b)]:
                ep = s.endpoints[0]
                if ep.state == READY and r.user_id:
                    self._add_sender(Sender(ep, r.user_id, [r, s], False))
            self._reconnects.pair(a, b)
        self.t_send_start = self._last_pace = self.loop.time()
        if not self.senders:
            self._finish()
            return
        self._sending = True
        if o.duration_s is not None or o.count is None:
            duration = o.duration_s if o.duration_s is not None else DEFAULT_DURATION_S
            self._timers.append(self.loop.call_later(duration, self._stop_sending))
        if o.rate is not None:
            self._ready.extend(self.senders)
            for sender in self.senders:
                sender.queued = True
            self._timers.append(self.loop.call_every(PACE_TICK_S, self._pace, first_s=0.0))
        else:
            for sender in self.senders:
                self._fill(sender)

    def _may_send(self, sender: Sender) -> bool:
        # The connection's own state, not only the endpoint's: when a connection
        # closes, its pending requests fail (and land here) before its close
        # callback marks the endpoint.
        conn = sender.endpoint.conn
        return (
            self._sending
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
            msg_data=self.verifier.body(ep.index, seq),
        )
        record = self.verifier.sending(key, self.loop.time())
        sender.outstanding += 1
        self.outstanding += 1
        self.sent_total += 1
        if self.options.count is not None and self.sent_total >= self.options.count:
            self._sending = False
        assert ep.session is not None
        ep.session.request(
            msg,
            lambda rsp, exc: self._acked(sender, key, record, rsp, exc),
            timeout_s=self.options.ack_timeout_s,
            response=msg_pb.IMMsgData if self.echo else msg_pb.IMMsgDataAck,
        )

    def _acked(
        self,
        sender: Sender,
        key: tuple[int, int],
        record: Sent,
        rsp: Any,
        exc: BaseException | None,
    ) -> None:
        sender.outstanding -= 1
        self.outstanding -= 1
        if self._logins.closing:
            return
        ep = sender.endpoint
        conv = sender.conv
        if exc is not None and self.options.reconnect and isinstance(exc, ConnectionError):
            # Its connection dropped: whether it was stored is unknown, as for any
            # client; it may still arrive (counted as unacked_delivered).
            self.verifier.unacked(conv)
            self.info["unacked_on_reconnect"] = self.info.get("unacked_on_reconnect", 0) + 1
        elif exc is not None:
            self.verifier.unacked(conv)
            kind = (
                "timeouts"
                if isinstance(exc, TimeoutError)
                else "unacked_on_close"
                if isinstance(exc, ConnectionError)
                else "bad_acks"
            )
            self._error(kind, f"{ep.user.name} message {key[1]}: {exc}")
        elif self.echo:
            if rsp.msg_data != self.verifier.body(*key):
                self._error("bad_acks", f"connection {key[0]} round trip {key[1]}: bytes differ")
            else:
                self._ack_ok(record)
        elif (
            rsp.msg_id == 0
            or rsp.user_id != ep.user.user_id
            or rsp.session_id != sender.session_id
            or rsp.session_type != sender.session_type
        ):
            self.verifier.unacked(conv)
            self._error(
                "bad_acks",
                f"{ep.user.name} message {key[1]} to {sender.session_id}: ack user "
                f"{rsp.user_id} session {rsp.session_id} type {rsp.session_type} "
                f"msg_id {rsp.msg_id}",
            )
        else:
            self._ack_ok(record)
            self.verifier.acked(sender, key, record, rsp.msg_id)
        if self.options.rate is None:
            self._fill(sender)
        elif not sender.queued and self._may_send(sender):
            self._ready.append(sender)
            sender.queued = True
        self._check_done()

    def _ack_ok(self, record: Sent) -> None:
        now = self.loop.time()
        record.t_ack = now
        self.t_send_end = now
        self.acked += 1
        self.ack_samples.append(now - record.t_sent)

    def _stop_sending(self) -> None:
        self._sending = False
        self._check_done()

    def _push(self, ep: Endpoint, message: Any) -> None:
        if isinstance(message, msg_pb.IMMsgData):
            self._delivered(ep, message)
        elif isinstance(message, login_pb.IMKickUser):
            ep.kicked = True
            self._error("kicks", f"{ep.user.name}: kicked (reason {message.kick_reason})")
        else:
            self.info["other_pushes"] += 1

    def _delivered(self, ep: Endpoint, msg: Any) -> None:
        key = self.verifier.delivered(ep, msg, self.loop.time())
        if key is None:
            return
        if self.options.receipts and ep.session is not None:
            group = msg.msg_type in GROUP_MSG_TYPES
            ep.session.send(
                msg_pb.IMMsgDataAck(
                    user_id=ep.user.user_id,
                    session_id=msg.to_session_id if group else msg.from_user_id,
                    msg_id=msg.msg_id,
                    session_type=base.SESSION_TYPE_GROUP if group else base.SESSION_TYPE_SINGLE,
                )
            )
        if self.verifier.arrived(ep.index, key) and self._draining and not self._reconnects.lost:
            self._finish()

    # -- phase 3: draining ---------------------------------------------------------------

    def _check_done(self) -> None:
        """Start draining once nothing is in flight and no sender may send any more
        (time or count is up, or every sender's connection is gone), and every
        dropped connection is back (or gave up)."""
        if self.finished or self._draining or self.outstanding or not self.t_send_start:
            return
        if self._reconnects.lost:
            return
        if self._sending and any(self._may_send(s) for s in self.senders):
            return
        self._sending = False
        if self.t_send_end == 0.0:
            self.t_send_end = self.loop.time()
        self._draining = True
        if not self.verifier.awaiting:
            self._finish()
        else:
            self._timers.append(self.loop.call_later(self.options.drain_s, self._drain_over))

    def _drain_over(self) -> None:
        """``drain_s`` has passed: finish, unless a dropped connection is still coming back
        (it may yet fetch what is awaited; :meth:`_back` finishes then)."""
        self._drain_late = True
        if not self._reconnects.lost:
            self._finish()

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        self._sending = False
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        if self._progress_out is not None and self._progress_tty:
            self._progress_out.write("\n")
            self._progress_out.flush()
        self.loop.stop()

    def interrupt(self) -> None:
        """Stop sending and finish as soon as the acks are in; a second call finishes now."""
        if self._sending:
            self._sending = False
            self._check_done()
        else:
            self._finish()

    def shutdown(self) -> None:
        """Close every connection; calls ``loop.stop()`` once all are closed (or aborted)."""
        self._logins.shutdown()

    # -- progress ------------------------------------------------------------------------

    def _progress(self) -> None:
        out = self._progress_out
        if out is None:
            return
        now = self.loop.time()
        if self.t_logins_done and not self.t_send_start:
            phase = "creating the group"
        elif not self.t_send_start:
            phase = f"login {self._logins_done}/{len(self.endpoints)}"
        elif self._draining:
            phase = f"drain, awaiting {len(self.verifier.awaiting)} deliveries"
        else:
            phase = f"send {now - self.t_send_start:5.1f} s"
        last_t, last_acked = self._last_progress
        rate = (self.acked - last_acked) / max(now - last_t, 1e-9)
        self._last_progress = (now, self.acked)
        errors = sum(self.errors.values())
        line = (
            f"load: {phase}  acked {self.acked:,} ({rate:,.0f}/s)  in flight {self.outstanding}"
            f"  errors {errors}"
        )
        if self._progress_tty:
            out.write("\r" + line.ljust(100))
        else:
            out.write(line + "\n")
        out.flush()

    # -- phase 4: verification -----------------------------------------------------------

    def report(self) -> LoadReport:
        """Verify what was received against what was acked, and sum up. Computed once."""
        if self._report is not None:
            return self._report
        found = self.verifier.verify(self._sender_of)
        self.delivery_samples = found.latency_s
        self.t_last_delivery = found.t_last
        self._report = self._summary(found)
        return self._report

    def _summary(self, found: Deliveries) -> LoadReport:
        """The report of this run, once ``found`` is verified."""
        t_end = self.t_logins_done or self.loop.time()
        login_s = max(t_end - self.t_start, 1e-9)
        send_s = max(self.t_send_end - self.t_send_start, 0.0) if self.t_send_start else 0.0
        delivery_s = max(found.t_last - self.t_send_start, 0.0) if found.delivered else 0.0
        refused = self.errors["refused_logins"]
        failed = self.errors["login_failures"]
        ok = self.acked > 0 and not any(self.errors.values())
        return LoadReport(
            ok=ok,
            mode="echo" if self.echo else "im",
            target=self._logins.target_text,
            connections=len(self.endpoints),
            users=len(self.users),
            group_size=self.options.group_size or 0,
            group_id=self.group_id,
            senders=len(self.senders),
            in_flight=self.options.in_flight,
            rate=self.options.rate,
            logins_ok=self.logins_ok,
            logins_refused=refused,
            logins_failed=failed,
            login_retries=self.login_retries,
            login_s=round(login_s, 3),
            logins_per_s=round(self.logins_ok / login_s, 1),
            sent=self.sent_total,
            acked=self.acked,
            send_s=round(send_s, 3),
            msgs_per_s=round(self.acked / send_s, 1) if send_s > 0 else 0.0,
            expected_deliveries=found.expected,
            deliveries=found.delivered,
            delivery_s=round(delivery_s, 3),
            deliveries_per_s=round(found.delivered / delivery_s, 1) if delivery_s > 0 else 0.0,
            ack_latency=Latency.of(self.ack_samples),
            delivery_latency=Latency.of(found.latency_s),
            errors=dict(self.errors),
            info=dict(self.info),
            problems=list(self.problems),
            loader_cpu_s=round(_cpu_s() - self._cpu_start, 2),
            reconnects=self._reconnects.count,
            caught_up=self._reconnects.caught_up,
            back_max_s=round(max(self._reconnects.back_s, default=0.0), 3),
        )


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
