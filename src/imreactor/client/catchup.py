"""Catch-up bookkeeping of a reconnecting client: each message queued once, none missed.

:class:`CatchUp` keeps, per session (:data:`SessionKey`), the ``msg_id`` values
already queued, where the session stood at the first login (the *baseline*: older
messages were never "missed") and where it stood when the connection last dropped.
Its contract:

* Every ``IMMsgData`` passes it at most once per ``(session, msg_id)``, whichever
  way it came: a live push (:meth:`~CatchUp.admit`), the ack of one this client sent
  (:meth:`~CatchUp.sent`), or a fetch after a reconnect (:meth:`~CatchUp.catch_up`).
* From :meth:`~CatchUp.hold` (the connection dropped) until a
  :meth:`~CatchUp.catch_up` completes, live messages are held back; the catch-up
  hands on what was missed first, in ``msg_id`` order per session (sessions in key
  order), then the held ones in the order they came, so each session stays in
  ``msg_id`` order. A catch-up that fails (a request raises) keeps holding, and the
  next one starts from the same place.

Threads: every method is safe from any thread (one lock). :meth:`~CatchUp.admit` and
:meth:`~CatchUp.hold` do not block, so they suit the loop thread; :meth:`~CatchUp.logged_in`
and :meth:`~CatchUp.catch_up` send blocking requests and must not run there. The
``deliver`` that :meth:`~CatchUp.catch_up` is given runs under the lock (so no live
message is admitted in between) and must neither block nor call back into this object.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

from google.protobuf.message import Message

from ..pdu.kinds import GROUP_MSG_TYPES
from ..pdu.proto import im_base_define_pb2 as base
from ..pdu.proto import im_message_pb2 as msg_pb
from .errors import ClientError

log = logging.getLogger(__name__)

#: Most messages caught up per session after one reconnect.
CATCH_UP_MAX_PER_SESSION = 1000
#: Messages one history request asks for (the server's cap is 200).
HISTORY_PAGE = 200

SessionKey = tuple[int, int]
"""``(session_type, session_id)``: a peer user id for 1:1 sessions, a group id for groups."""

Deliver = Callable[[Message, int], Any]
"""``deliver(message, seq)``: queue a push for the client's reader."""


def session_of(message: Any, my_user_id: int) -> SessionKey:
    """The session an ``IMMsgData`` belongs to, as seen by ``my_user_id``."""
    if message.msg_type in GROUP_MSG_TYPES:
        return (base.SESSION_TYPE_GROUP, message.to_session_id)
    if message.from_user_id == my_user_id:
        return (base.SESSION_TYPE_SINGLE, message.to_session_id)
    return (base.SESSION_TYPE_SINGLE, message.from_user_id)


def as_push(session_type: int, session_id: int, m: Any, my_user_id: int) -> Any:
    """A history ``MsgInfo`` as the ``IMMsgData`` the server would have pushed."""
    if session_type == base.SESSION_TYPE_GROUP:
        to = session_id
    else:
        to = session_id if m.from_session_id == my_user_id else my_user_id
    return msg_pb.IMMsgData(
        from_user_id=m.from_session_id,
        to_session_id=to,
        msg_id=m.msg_id,
        create_time=m.create_time,
        msg_type=m.msg_type,
        msg_data=m.msg_data,
    )


class Requests(Protocol):
    """The blocking requests a catch-up sends (:class:`~imreactor.client.blocking.Client`'s)."""

    @property
    def user_id(self) -> int: ...

    def unread(self) -> Any: ...

    def recent_sessions(self, since: int = 0) -> Any: ...

    def history(
        self, session_id: int, begin: int = ..., count: int = ..., session_type: int = ...
    ) -> Any: ...


class _Seen:
    """The msg_ids of one session already queued: exact above a floor that trails the newest."""

    WINDOW = 4096

    __slots__ = ("floor", "ids", "newest")

    def __init__(self) -> None:
        self.newest = 0
        self.floor = 0
        self.ids: set[int] = set()

    def add(self, msg_id: int) -> bool:
        """Record ``msg_id``; False if it was seen before (or is below the floor)."""
        if msg_id <= self.floor or msg_id in self.ids:
            return False
        self.ids.add(msg_id)
        self.newest = max(self.newest, msg_id)
        if len(self.ids) > 2 * self.WINDOW:
            self.floor = self.newest - self.WINDOW
            self.ids = {i for i in self.ids if i > self.floor}
        return True


class CatchUp:
    """What one client queued per session, and what it fetches after a reconnect."""

    def __init__(self) -> None:
        #: ``server_time`` of the first login (0 before it); older messages are not missed.
        self.online_since = 0
        #: Messages handed on by catch-ups so far.
        self.caught_up = 0
        self._lock = threading.Lock()
        self._seen: dict[SessionKey, _Seen] = {}
        self._baseline: dict[SessionKey, int] = {}
        self._known: dict[SessionKey, int] = {}
        self._catching_up = False
        self._held: list[tuple[Message, int]] = []

    # -- from the connection --------------------------------------------------------------

    def admit(self, message: Any, seq: int, my_user_id: int) -> bool:
        """A live ``IMMsgData``: True to deliver it now.

        False for one that passed before (dropped) and for one held while a catch-up
        is pending (:meth:`catch_up` delivers it).
        """
        with self._lock:
            if not self._mark_seen(session_of(message, my_user_id), message.msg_id):
                return False
            if self._catching_up:
                # Queued after the missed ones, so each session stays in id order.
                self._held.append((message, seq))
                return False
        return True

    def sent(self, key: SessionKey, msg_id: int) -> None:
        """A message this client sent was acked as ``msg_id`` in session ``key``."""
        with self._lock:
            self._mark_seen(key, msg_id)

    def hold(self) -> None:
        """The connection dropped: hold live messages until a :meth:`catch_up` completes."""
        with self._lock:
            if not self._catching_up:
                # Where each session stood when the link dropped: what comes live
                # after a re-login must not hide what was missed in between.
                self._catching_up = True
                self._known = {key: seen.newest for key, seen in self._seen.items()}

    # -- blocking: after logins -----------------------------------------------------------

    def logged_in(self, server_time: int, requests: Requests) -> None:
        """After a login: the first one sets :attr:`online_since` and asks for the baseline."""
        if self.online_since:
            return
        self.online_since = server_time
        try:
            sessions = requests.recent_sessions().contact_session_list
        except (ClientError, TimeoutError) as exc:
            log.warning("recent sessions at login failed (%s); catch-up uses time only", exc)
            return
        with self._lock:
            for s in sessions:
                self._baseline[(s.session_type, s.session_id)] = s.latest_msg_id

    def catch_up(self, requests: Requests, deliver: Deliver) -> None:
        """Deliver what was missed while offline, then what was held meanwhile.

        Asks for unread counts and recent sessions, then for the history of each
        session whose newest ``msg_id`` is above where it stood (at the drop, or at
        the first login), at most :data:`CATCH_UP_MAX_PER_SESSION` per session. Raises
        what the requests raise, holding on.
        """
        latest: dict[SessionKey, int] = {}
        for u in requests.unread().unreadinfo_list:
            latest[(u.session_type, u.session_id)] = u.latest_msg_id
        for s in requests.recent_sessions().contact_session_list:
            key = (s.session_type, s.session_id)
            latest[key] = max(latest.get(key, 0), s.latest_msg_id)
        missed: list[tuple[SessionKey, Any]] = []
        for key, newest in sorted(latest.items()):
            with self._lock:
                known = max(self._known.get(key, 0), self._baseline.get(key, 0))
            if newest > known:
                fetched = _fetch_after(requests, key, known, newest)
                log.debug(
                    "catch-up %s: ids %d..%d, %d fetched", key, known + 1, newest, len(fetched)
                )
                missed.extend((key, m) for m in fetched)
        with self._lock:
            for (stype, sid), m in missed:
                if m.create_time < self.online_since or not self._mark_seen((stype, sid), m.msg_id):
                    continue
                deliver(as_push(stype, sid, m, requests.user_id), 0)
                self.caught_up += 1
            held, self._held = self._held, []
            self._catching_up = False
            for message, seq in held:
                deliver(message, seq)

    def _mark_seen(self, key: SessionKey, msg_id: int) -> bool:
        """Record a queued (or acked) message; False if it was already. Hold ``_lock``."""
        seen = self._seen.get(key)
        if seen is None:
            seen = self._seen[key] = _Seen()
        return seen.add(msg_id)


def _fetch_after(requests: Requests, key: SessionKey, known: int, newest: int) -> list[Any]:
    """Messages of session ``key`` with ids in ``(known, newest]``, ascending."""
    stype, sid = key
    floor = max(known, newest - CATCH_UP_MAX_PER_SESSION)
    found: dict[int, Any] = {}
    begin = newest
    while begin > floor:
        page = requests.history(sid, begin, min(begin - floor, HISTORY_PAGE), stype).msg_list
        if not page:
            break
        for m in page:
            if m.msg_id > floor:
                found[m.msg_id] = m
        begin = min(m.msg_id for m in page) - 1
    return [found[i] for i in sorted(found)]
