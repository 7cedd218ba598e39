"""A dropped connection comes back and catches up: :class:`Reconnects` (``reconnect``, 1:1).

A connection that drops (its msg_server died, say) is not an error: after a random
wait of up to ``reconnect_jitter_s`` it logs in again the way it first did (through
login_server unless pinned) and fetches from history (``IMGetMsgListReq``) what its
conversation got past the last msg_id it had seen; a message acked while it was away
must arrive live or in that fetch, and the run ends only once every dropped connection
is back or has given up (``login_retry_s``). Messages in flight on a dropped connection
were never acked and are not counted.

Loop thread only. An endpoint is away from :meth:`Reconnects.dropped` until it is
caught up or has given up; ``back()`` runs after each such return.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

from ...net import EventLoop
from ...pdu.proto import im_base_define_pb2 as base
from ...pdu.proto import im_message_pb2 as msg_pb
from ..session import ClientSession
from .login import Logins
from .options import LoadOptions
from .records import IDLE, Endpoint, User, conversation
from .verify import ErrorSink, Verifier

log = logging.getLogger(__name__)

#: Messages per history request while catching up after a reconnect.
CATCH_UP_PAGE = 200


class Reconnects:
    """The dropped endpoints of a run, each until it is back (module docstring).

    ``lost``: endpoints away now; ``count``: drops so far; ``caught_up``: messages
    received from history after them; ``back_s``: each return's drop-to-caught-up time.
    """

    def __init__(
        self,
        loop: EventLoop,
        options: LoadOptions,
        logins: Logins,
        verifier: Verifier,
        error: ErrorSink,
        back: Callable[[], None],
    ) -> None:
        self.loop = loop
        self.options = options
        self._logins = logins
        self._verifier = verifier
        self._error = error
        self._on_back = back
        self.lost = 0
        self.count = 0
        self.caught_up = 0
        self.back_s: list[float] = []
        #: The pair partner of each sending pair's users (whose conversation a
        #: reconnect catches up).
        self._peer: dict[int, User] = {}

    def pair(self, a: User, b: User) -> None:
        """``a`` and ``b`` are a sending pair: a reconnect of either catches up with the other."""
        self._peer[a.index], self._peer[b.index] = b, a

    def dropped(self, ep: Endpoint) -> None:
        """``ep`` dropped: log in again after a random wait, the way it first did."""
        now = self.loop.time()
        if not ep.lost_at:  # not already counted (a drop during its catch-up)
            ep.lost_at = now
            self.lost += 1
        self.count += 1
        ep.state = IDLE
        delay = random.uniform(0.0, self.options.reconnect_jitter_s)
        ep.first_try = now + delay  # the retry window counts from the first try
        self.loop.call_later(delay, self._logins.attempt, ep)

    def logged_in(self, ep: Endpoint) -> None:
        """Dropped ``ep`` is logged in again: catch up on its conversation."""
        self._catch_up(ep, ep.session)

    def gave_up(self, ep: Endpoint) -> None:
        """Dropped ``ep`` could not log in again."""
        self._back(ep, failed=True)

    def _catch_up(self, ep: Endpoint, session: ClientSession | None, begin: int = 0) -> None:
        """Fetch, newest first, what ``ep``'s conversation got past what ``ep`` saw.

        Pages of :data:`CATCH_UP_PAGE` down to the highest msg_id it received; each
        message of this run it has not received counts as received (caught up). A
        user outside the sending pairs has no conversation: it is back at once.
        """
        peer = self._peer.get(ep.user.index)
        if peer is None or session is None:
            self._back(ep)
            return
        conv = conversation(ep.user.user_id, peer.user_id, base.MSG_TYPE_SINGLE_TEXT)
        floor = ep.last_id.get(conv, 0)
        req = msg_pb.IMGetMsgListReq(
            user_id=ep.user.user_id,
            session_type=base.SESSION_TYPE_SINGLE,
            session_id=peer.user_id,
            msg_id_begin=begin,
            msg_cnt=CATCH_UP_PAGE,
        )

        def answered(rsp: Any, exc: BaseException | None) -> None:
            if ep.session is not session or self._logins.closing:
                return  # that connection is gone; its next login catches up again
            if exc is not None and self.loop.time() - ep.lost_at >= self.options.login_retry_s:
                self._error("login_failures", f"{ep.user.name}: catch-up failed: {exc}")
                self._back(ep, failed=True)
                return
            if exc is not None:
                log.info("%s: catch-up: %s; again in 1 s", ep.user.name, exc)
                self.loop.call_later(1.0, self._catch_up, ep, session, begin)
                return
            older = [m for m in rsp.msg_list if m.msg_id > floor]
            for m in older:
                self._caught(ep, peer, m)
            if older and len(rsp.msg_list) == len(older) and min(m.msg_id for m in older) > 1:
                self._catch_up(ep, session, min(m.msg_id for m in older) - 1)
                return
            last = max((m.msg_id for m in older), default=0)
            if last > ep.last_id.get(conv, 0):
                ep.last_id[conv] = last
            self._back(ep)

        session.request(
            req, answered, timeout_s=self.options.ack_timeout_s, response=msg_pb.IMGetMsgListRsp
        )

    def _caught(self, ep: Endpoint, peer: User, m: Any) -> None:
        """A history message of ``ep``'s conversation: received, unless it was already."""
        if self._verifier.caught(ep, peer, m, self.loop.time()):
            self.caught_up += 1

    def _back(self, ep: Endpoint, *, failed: bool = False) -> None:
        """``ep`` is caught up (or gave up): the run may end once every drop is back."""
        if not failed:
            self.back_s.append(self.loop.time() - ep.lost_at)
        ep.lost_at = 0.0
        self.lost -= 1
        self._on_back()
