"""One load run on one loop: :class:`LoadRun`, the state machine of its phases.

One :class:`~imreactor.client.session.ClientSession` per connection. A run has
four phases:

1. **login**: every connection logs in as ``load<i>`` (at most
   ``login_concurrency`` logins at a time), the way :class:`~.login.Logins` says:
   through login_server, or pinned (with ``--msg-servers A,B,...`` and two or more
   entries the two users of a pair are always on different servers).
2. **send**: users ``load<2p>`` and ``load<2p+1>`` form pair ``p``. The
   desktop connection of the first (and with ``duplex`` also of the second)
   sends 1:1 ``IMMsgData`` to the other, as :class:`~.send.Sending` says
   (in flight, rate, duration, count).

   With ``group_size`` M the users are ``load0..load<M-1>`` instead, and no
   pairs: once all are logged in, ``load0`` creates a temporary group of all
   of them (``IMGroupCreateReq``; the answer must list exactly them), then the
   desktop connections of the first ``senders`` members send group messages
   (``msg_type`` 0x11) to it, by the same rules.
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

import os
import resource
from collections import deque
from collections.abc import Callable
from typing import IO, Any

from ...net import EventLoop, Timer
from ...pdu.kinds import GROUP_MSG_TYPES
from ...pdu.proto import im_base_define_pb2 as base
from ...pdu.proto import im_group_pb2 as group_pb
from ...pdu.proto import im_login_pb2 as login_pb
from ...pdu.proto import im_message_pb2 as msg_pb
from .login import Logins
from .options import ERROR_KINDS, LoadOptions
from .reconnect import Reconnects
from .records import FAILED, READY, Endpoint, Sender, Sent, User
from .report import MAX_PROBLEMS, Latency, LoadReport
from .send import Sending
from .verify import Deliveries, Verifier


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
        #: What was sent, acked and received where, and the verdict on it.
        self._verifier = Verifier(
            self._run_id, options.size, self.endpoints, self.info, self._error
        )
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
        self.group_id = 0
        self.group_members: list[User] = []
        #: The senders, their pace and their acks.
        self._send = Sending(
            loop,
            options,
            self._verifier,
            self.info,
            self._error,
            closing=lambda: self._logins.closing,
            settled=self._check_done,
        )
        self._draining = False
        self._timers: list[Timer] = []
        self._last_progress = (0.0, 0)
        self._cpu_start = _cpu_s()
        self._report: LoadReport | None = None
        #: With ``reconnect``: the endpoints dropped, each until it is back.
        self._reconnects = Reconnects(
            loop, options, self._logins, self._verifier, self._error, back=self._back
        )
        self._drain_late = False
        #: Filled by :meth:`report`: each verified delivery's latency, and the last one's time.
        self.delivery_samples: list[float] = []
        self.t_last_delivery = 0.0

    @property
    def senders(self) -> list[Sender]:
        """The sending connections (once sending began)."""
        return self._send.senders

    @property
    def sent_total(self) -> int:
        """Messages sent."""
        return self._send.sent_total

    @property
    def acked(self) -> int:
        """Messages acked as they should be (round trips, with ``echo``)."""
        return self._send.acked

    @property
    def outstanding(self) -> int:
        """Messages sent and not answered yet."""
        return self._send.outstanding

    @property
    def ack_samples(self) -> list[float]:
        """Each good ack's latency (s)."""
        return self._send.ack_samples

    @property
    def t_send_start(self) -> float:
        """When sending began (0: not yet)."""
        return self._send.t_send_start

    @property
    def t_send_end(self) -> float:
        """The last good ack (or when sending was over without one)."""
        return self._send.t_send_end

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
        """Each message sent, by (sending endpoint, seq); once acked, where it should arrive."""
        return self._verifier.sent

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
            self._send.resume(ep.index)
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

    def _back(self) -> None:
        """A dropped connection is back (or gave up): the run may end once every drop is."""
        if (
            self._draining
            and not self._reconnects.lost
            and (not self._verifier.awaiting or self._drain_late)
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

    def _start_sending(self) -> None:
        o = self.options
        if self.group_id:
            for user in self.users[: o.group_senders]:
                ep = user.endpoints[0]
                if ep.state == READY:
                    self._send.add(Sender(ep, self.group_id, self.group_members, True))
        for p in range(o.pair_count):
            a, b = self.users[2 * p], self.users[2 * p + 1]
            for s, r in [(a, b), (b, a)] if o.duplex else [(a, b)]:
                ep = s.endpoints[0]
                if ep.state == READY and r.user_id:
                    self._send.add(Sender(ep, r.user_id, [r, s], False))
            self._reconnects.pair(a, b)
        if not self._send.start():
            self._finish()

    # -- receiving -----------------------------------------------------------------------

    def _push(self, ep: Endpoint, message: Any) -> None:
        if isinstance(message, msg_pb.IMMsgData):
            self._delivered(ep, message)
        elif isinstance(message, login_pb.IMKickUser):
            ep.kicked = True
            self._error("kicks", f"{ep.user.name}: kicked (reason {message.kick_reason})")
        else:
            self.info["other_pushes"] += 1

    def _delivered(self, ep: Endpoint, msg: Any) -> None:
        key = self._verifier.delivered(ep, msg, self.loop.time())
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
        if self._verifier.arrived(ep.index, key) and self._draining and not self._reconnects.lost:
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
        if self._send.may_send_more():
            return
        self._send.over()
        self._draining = True
        if not self._verifier.awaiting:
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
        self._send.close()
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        if self._progress_out is not None and self._progress_tty:
            self._progress_out.write("\n")
            self._progress_out.flush()
        self.loop.stop()

    def interrupt(self) -> None:
        """Stop sending and finish as soon as the acks are in; a second call finishes now."""
        if self._send.active:
            self._send.stop()
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
            phase = f"drain, awaiting {len(self._verifier.awaiting)} deliveries"
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
        found = self._verifier.verify(self._send.sender_of)
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
            target=self._logins.target_text + (" over WebSocket" if self.options.ws else ""),
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
