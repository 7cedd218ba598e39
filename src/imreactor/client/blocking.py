"""A blocking client for scripts, tests and the terminal chat: the reactor runs on a private thread.

Every method is safe to call from any thread except the client's own loop
thread. Server pushes (messages, kicks, notifications) are queued in
:attr:`Client.pushes` and read with :meth:`Client.next_push` /
:meth:`Client.wait_for`; optional callbacks (``on_push``, ``on_message``,
``on_kick``, ``on_status``) see the same pushes, in the same order, on one
callback thread of their own (so they may call this client's blocking methods).

**Reconnect and catch-up** (``reconnect=True``): once :meth:`Client.login` has
succeeded, a connection that drops (anything but a kick or :meth:`Client.close`)
is reconnected on a supervisor thread, with :class:`~imreactor.net.Backoff`
delays, through login_server when ``login_url`` is given (else to the same
address), and logged in again with the saved credentials. Then the client
catches up: it asks for unread counts and recent sessions, fetches the history
of every session whose newest ``msg_id`` is above the last one this client saw
there, and queues the messages it missed as ``IMMsgData`` pushes (seq 0), in
``msg_id`` order per session, before anything that arrived live meanwhile. In
this mode every ``IMMsgData`` is queued at most once per ``(session, msg_id)``
(also what the client sent itself and got an ack for counts as seen), so nothing
is lost or duplicated across reconnects. A message this client sent whose ack
was lost with the connection comes back as a push, as it would from another of
the user's devices.

**Presence** (:meth:`Client.watch`): msg_server may send ``IMUserStatNotify`` only
to connections that subscribed to that user with an ``IMUsersStatReq``, and such
subscriptions die with the connection. The client remembers whom it watches (at
most ``watch_limit`` users) and, with ``reconnect=True``, subscribes them again
after each reconnect, before catching up: their statuses then are queued as
``IMUserStatNotify`` pushes (seq 0), so a change missed while offline is seen
like a live one.

The parts, one module each: :mod:`~imreactor.client.bridge` runs the loop thread
and the waits on it, :mod:`~imreactor.client.catchup` keeps what was queued and
what to fetch, :mod:`~imreactor.client.reconnect` is the supervisor thread,
:mod:`~imreactor.client.notifier` the callback thread and
:mod:`~imreactor.client.status` the status. This module holds the connection
(one :class:`~imreactor.client.session.ClientSession` at a time) and the API.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from ssl import SSLContext
from typing import Any, TypeVar

from google.protobuf.message import Message

from ..net import Backoff, Transport
from ..pdu.imconn import CLIENT_SIDE, Keepalive, LinkPolicy, ResponseCallback
from ..pdu.kinds import NOT_READY
from ..pdu.password import password_digest
from ..pdu.proto import im_base_define_pb2 as base
from ..pdu.proto import im_buddy_pb2 as buddy
from ..pdu.proto import im_group_pb2 as group_pb
from ..pdu.proto import im_login_pb2 as login_pb
from ..pdu.proto import im_message_pb2 as msg_pb
from .bridge import LoopBridge, fail, resolve
from .catchup import CATCH_UP_MAX_PER_SESSION, HISTORY_PAGE, CatchUp, SessionKey, session_of
from .crypto import TextCipher
from .errors import ClientError, LoginRefused
from .images import image_text
from .locate import locate, locate_msg_server
from .msfs import upload
from .notifier import MessageCallback, Notifier, PushCallback, StatusCallback
from .reconnect import DEFAULT_RECONNECT_DELAYS_S, Supervisor
from .session import DEFAULT_WATCH_LIMIT, ClientSession
from .status import ClientStatus, StatusBoard

__all__ = [
    "CATCH_UP_MAX_PER_SESSION",
    "DEFAULT_RECONNECT_DELAYS_S",
    "HISTORY_PAGE",
    "Client",
    "ClientError",
    "ClientStatus",
    "LoginRefused",
    "MessageCallback",
    "PushCallback",
    "SessionKey",
    "StatusCallback",
    "locate_msg_server",
    "session_of",
]

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)


class Client:
    """One user connection, driven synchronously; see the module docstring for reconnects.

    ``aes_key``: encode texts sent with :meth:`send_text` / :meth:`send_group_text`
    the way the original clients do (:mod:`imreactor.client.crypto`);
    :meth:`decode_text` reverses it. ``queue_pushes=False`` leaves :attr:`pushes`
    empty (for callers that only use callbacks). ``source_host`` binds the local end
    of every connection to that address (e.g. one of 127.0.0.0/8). ``watch_limit``
    bounds the users :meth:`watch` subscribes to (also per connection). ``ssl``: connect
    over TLS with this context (:func:`imreactor.client.tls.client_context`), verifying
    the certificate and ``server_hostname`` (default: the host connected to); with
    :meth:`via_login_server` the msg_server's TLS port (``"tlsPort"``) is used.
    ``websocket``: speak WebSocket to ``host:port`` (a msg_server's ``ws_port``, or with
    ``ssl`` its ``wss_port``), asking for this path, e.g. ``"/"``: one PDU per message,
    the rest as over TCP; :meth:`via_login_server` with ``ws=True`` sets it from the
    answer's ``wsURL`` (``wssURL``).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        policy: LinkPolicy = CLIENT_SIDE,
        timeout_s: float = 10.0,
        aes_key: bytes | str | None = None,
        reconnect: bool = False,
        login_url: str | None = None,
        backoff: Backoff | None = None,
        on_push: PushCallback | None = None,
        on_message: MessageCallback | None = None,
        on_kick: MessageCallback | None = None,
        on_status: StatusCallback | None = None,
        queue_pushes: bool = True,
        source_host: str | None = None,
        watch_limit: int = DEFAULT_WATCH_LIMIT,
        ssl: SSLContext | None = None,
        server_hostname: str | None = None,
        msfs_url: str = "",
        websocket: str | None = None,
    ) -> None:
        if watch_limit < 0:
            raise ValueError(f"watch_limit must be at least 0, not {watch_limit}")
        self.host = host
        #: Where :meth:`send_image` uploads (login_server's msfsPrior; "" when unknown).
        self.msfs_url = msfs_url
        #: Local address every connection of this client is bound to (None: the OS picks).
        self.source_host = source_host
        self.port = port
        self.timeout_s = timeout_s
        self.policy = policy
        self.pushes: queue.Queue[tuple[Message, int]] = queue.Queue()
        self.user_id = 0
        self.user_info: Any = None
        self.cipher = TextCipher(aes_key) if aes_key is not None else None
        self.reconnect = reconnect
        self.login_url = login_url
        self.backoff = backoff or Backoff(DEFAULT_RECONNECT_DELAYS_S, jitter=0.2)
        self.watch_limit = watch_limit
        #: TLS context of every connection (None: plain TCP).
        self.ssl = ssl
        self.server_hostname = server_hostname
        #: The WebSocket path every connection asks for (None: TCP, or TLS).
        self.websocket = websocket
        self._queue_pushes = queue_pushes
        self._closed = threading.Event()  # the current connection is down
        self._online = threading.Event()  # logged in (and caught up)
        self._kicked = False
        self._credentials: tuple[str, str, int] | None = None
        self._catchup = CatchUp()  # used in reconnect mode only
        # Users to keep subscribed across reconnects, in the order first asked (guarded
        # by _watch_lock); a dict for that order, since the first ones fit if the bound
        # shrinks.
        self._watch_lock = threading.Lock()
        self._watching: dict[int, None] = {}
        self._notifier: Notifier | None = None
        if on_push or on_message or on_kick or on_status:
            self._notifier = Notifier(on_push, on_message, on_kick, on_status)
        self._status = StatusBoard(self._notifier.put if self._notifier is not None else None)
        self._bridge = LoopBridge()
        self._keepalive = Keepalive(self._bridge.loop)
        # The current connection's generation, session and transport, set on the loop
        # thread as each connect starts; a given-up attempt's callbacks see another gen.
        self._gen = 0
        self._session: ClientSession | None = None
        self._conn: Transport | None = None
        self._logged_in_session: ClientSession | None = None  # set by a successful login
        self._supervisor: Supervisor | None = None
        if reconnect:
            self._supervisor = Supervisor(
                self.backoff,
                needed=lambda: (
                    self._closed.is_set() and self._credentials is not None and not self._ended()
                ),
                ended=self._ended,
                attempt=self._reconnect_once,
                retry=self._reconnect_failed,
                online=self._reconnected,
            )
        try:
            self._open(host, port)
        except BaseException:
            self.close()
            raise
        if self._supervisor is not None:
            self._supervisor.start()

    @property
    def status(self) -> ClientStatus:
        """The current :class:`ClientStatus` (also what ``on_status`` is called with)."""
        return self._status.status

    @property
    def closed_with(self) -> BaseException | None:
        """What closed the last connection, or the refusal that stopped reconnecting."""
        return self._status.closed_with

    @property
    def reconnects(self) -> int:
        """Successful reconnects (each followed by a catch-up) so far."""
        return self._supervisor.reconnects if self._supervisor is not None else 0

    @property
    def may_reconnect(self) -> bool:
        """Whether a reconnect may still happen: False without ``reconnect=True``, and for
        good once the client was closed, kicked, or had its login refused."""
        return self._supervisor is not None and self._supervisor.alive

    @property
    def caught_up(self) -> int:
        """Messages queued by catch-ups so far."""
        return self._catchup.caught_up

    # -- construction helpers -------------------------------------------------------------

    @classmethod
    def connect(cls, host: str, port: int, **kw: Any) -> Client:
        """Connect straight to a msg_server."""
        return cls(host, port, **kw)

    @classmethod
    def via_login_server(cls, url: str, *, ws: bool = False, **kw: Any) -> Client:
        """Ask login_server's ``/msg_server`` where to go (``url``: ``http://host:port``).

        With ``reconnect=True``, reconnects ask the same login_server again. With
        ``ssl``, an ``https://`` login_server is verified with the same context. With
        ``ws``, connect to the answer's ``wsURL`` (with ``ssl``: ``wssURL``) by WebSocket;
        an answer without one is a :class:`ClientError`.
        """
        found = locate(url, kw.get("timeout_s", 10.0), ssl=kw.get("ssl"), ws=ws)
        kw.setdefault("msfs_url", found.msfs_url)
        if ws:
            kw["websocket"] = found.ws_path
        if kw.get("reconnect"):
            kw.setdefault("login_url", url)
        return cls(found.host, found.port, **kw)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- connections ----------------------------------------------------------------------

    def _open(self, host: str, port: int) -> None:
        """Connect a fresh session to ``host:port`` and wait until it is up (ClientError if not)."""
        connected: concurrent.futures.Future[None] = concurrent.futures.Future()
        gen = self._gen + 1

        def on_connected() -> None:
            if gen == self._gen:  # not an attempt given up on
                self._closed.clear()
            resolve(connected, None)

        def on_failed(conn: Transport | None, exc: BaseException | None) -> None:
            fail(connected, ClientError(f"cannot connect to {host}:{port}: {exc}"))

        session = ClientSession(
            lambda message, seq: self._push(gen, message, seq),
            lambda exc: self._lost(gen, exc),
            on_connected,
            self._keepalive,
            self.policy,
            watch_limit=self.watch_limit,
        )

        def start() -> None:
            self._gen = gen
            self._session = session
            self._conn = None
            conn: Transport
            try:
                source = None if self.source_host is None else (self.source_host, 0)
                conn = self._bridge.loop.connect(
                    host,
                    port,
                    session,
                    timeout_s=self.timeout_s,
                    source=source,
                    ssl=self.ssl,
                    server_hostname=self.server_hostname,
                    websocket=self.websocket,
                )
            except OSError as exc:
                on_failed(None, exc)
                return
            self._conn = conn
            conn.add_close_callback(on_failed)

        self._bridge.call_soon(start)
        self._bridge.wait(connected, self.timeout_s + 1)
        self.host, self.port = host, port

    def _abort_now(self) -> None:
        """Loop thread: abort the current connection, if any."""
        if self._conn is not None:
            self._conn.abort()

    def _abort_connection(self) -> None:
        self._bridge.call_soon(self._abort_now)

    # -- loop-side callbacks --------------------------------------------------------------

    def _push(self, gen: int, message: Message, seq: int) -> None:
        if gen != self._gen:
            return  # a connection given up on
        if isinstance(message, login_pb.IMKickUser):
            self._kicked = True
        if (
            self.reconnect
            and isinstance(message, msg_pb.IMMsgData)
            and not self._catchup.admit(message, seq, self.user_id)
        ):
            return
        self._deliver(message, seq)

    def _deliver(self, message: Message, seq: int) -> None:
        if self._queue_pushes:
            self.pushes.put((message, seq))
        if self._notifier is not None:
            self._notifier.put((message, seq))

    def _lost(self, gen: int, exc: BaseException | None) -> None:
        if gen != self._gen:
            return
        self._online.clear()
        self._closed.set()
        if not self._status.lost(exc):
            return  # reconnecting gave up: closed_with keeps the refusal
        if self._bridge.closing:
            return
        if self._kicked:
            self._status.set(ClientStatus.KICKED)
            if self._supervisor is not None:
                self._supervisor.wake()  # to see that reconnecting is over, and end
        elif self._supervisor is not None and self._credentials is not None:
            self._catchup.hold()
            self._status.set(ClientStatus.OFFLINE)
            self._supervisor.wake()
        else:
            self._status.set(ClientStatus.CLOSED)

    # -- running things on the loop -------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        return not self._closed.is_set()

    def request(self, message: Message, response: type[M], timeout_s: float | None = None) -> M:
        """Send ``message`` and wait for the response of type ``response``.

        Raises :class:`ClientError` if the connection is down or closes first, or if no
        answer comes within the timeout (the session's ``TimeoutError`` is wrapped). A
        bare ``TimeoutError`` means the client's own loop thread did not answer within
        the timeout plus one second (a stuck loop, not a slow server).
        """

        def start(session: ClientSession, done: ResponseCallback, timeout: float) -> None:
            session.request(message, done, timeout_s=timeout, response=response)

        answer: M = self._on_session(
            start, timeout_s, login=isinstance(message, login_pb.IMLoginReq)
        )
        return answer

    def _on_session(
        self,
        start: Callable[[ClientSession, ResponseCallback, float], None],
        timeout_s: float | None,
        *,
        login: bool = False,
    ) -> Any:
        """Run ``start(session, done, timeout_s)`` on the loop thread; wait for ``done``.

        ``start`` sends a request on the current session and makes sure ``done(answer,
        exc)`` is called once. What fails (no session, not logged in yet, ``start``
        raising, ``done`` with an exception, including the session's timeout) raises
        :class:`ClientError`; only a loop thread that does not run ``done`` within the
        timeout plus one second raises ``TimeoutError``. ``login``: ``start`` sends the
        login itself (allowed before a reconnected session is logged in).
        """
        timeout = timeout_s or self.timeout_s

        def run(done: ResponseCallback) -> None:
            session = self._session
            if session is None or not session.connected:
                done(None, ConnectionError("not connected"))
                return
            if not self._may_send(session, login):
                done(None, ConnectionError("not logged in yet (reconnecting)"))
                return
            start(session, done, timeout)

        return self._bridge.answer(run, timeout)

    def _may_send(self, session: ClientSession, login: bool) -> bool:
        """Loop thread: False for anything but a login on a reconnected, not yet logged-in
        session (msg_server closes a connection that sends other commands before login)."""
        return self._credentials is None or session is self._logged_in_session or login

    def send(self, message: Message, seq: int = 0, *, partial: bool = False) -> None:
        """Send without waiting for anything."""

        def write() -> None:
            session = self._session
            if session is None or not session.connected:
                raise ClientError("not connected")
            if not self._may_send(session, isinstance(message, login_pb.IMLoginReq)):
                raise ClientError("not logged in yet (reconnecting)")
            session.send(message, seq, partial=partial)

        self._bridge.call(write, self.timeout_s)

    def send_raw(self, data: bytes) -> None:
        """Write raw bytes (for tests of bad input)."""

        def write() -> None:
            if self._conn is not None:
                self._conn.write(data)

        self._bridge.call(write, self.timeout_s)

    # -- login ----------------------------------------------------------------------------

    def _login_once(self, user_name: str, password: str, client_type: int) -> Any:
        req = login_pb.IMLoginReq(
            user_name=user_name,
            password=password_digest(password),
            online_status=base.USER_STATUS_ONLINE,
            client_type=base.ClientType.ValueType(client_type),
            client_version="imreactor-sdk",
        )
        session = self._session
        res = self.request(req, login_pb.IMLoginRes)
        if res.result_code == 0:
            self._logged_in_session = session
            self.user_id = res.user_info.user_id
            self.user_info = res.user_info
        return res

    def login(
        self,
        user_name: str,
        password: str,
        client_type: int = base.CLIENT_TYPE_WINDOWS,
        *,
        check: bool = True,
    ) -> Any:
        """Log in; returns ``IMLoginRes``. With ``check``, a refusal raises :class:`LoginRefused`.

        A success saves the credentials for reconnects (``reconnect=True``).
        """
        res = self._login_once(user_name, password, client_type)
        if res.result_code != 0:
            if check:
                raise LoginRefused(res.result_code, res.result_string)
            return res
        self._credentials = (user_name, password, client_type)
        if self.reconnect:
            self._catchup.logged_in(res.server_time, self)
        self._online.set()
        self._status.set(ClientStatus.ONLINE)
        return res

    @property
    def is_online(self) -> bool:
        """Logged in on a live connection (after a reconnect: once caught up)."""
        return self._online.is_set()

    def wait_online(self, timeout_s: float | None = None) -> bool:
        """True once logged in (after a reconnect: once caught up), within the timeout."""
        return self._online.wait(timeout_s or self.timeout_s)

    # -- the IM API -----------------------------------------------------------------------

    def send_message(
        self, to_session_id: int, data: bytes, msg_type: int = base.MSG_TYPE_SINGLE_TEXT
    ) -> Any:
        """Send ``IMMsgData``; returns the server's ``IMMsgDataAck`` (stored, with its msg_id)."""
        msg = msg_pb.IMMsgData(
            from_user_id=self.user_id,
            to_session_id=to_session_id,
            msg_id=0,
            create_time=int(time.time()),
            msg_type=base.MsgType.ValueType(msg_type),
            msg_data=data,
        )
        ack = self.request(msg, msg_pb.IMMsgDataAck)
        if self.reconnect:
            self._catchup.sent((ack.session_type, ack.session_id), ack.msg_id)
        return ack

    def encode_text(self, text: str) -> bytes:
        """``msg_data`` for ``text``: AES-encoded with ``aes_key``, else plain UTF-8."""
        if self.cipher is not None:
            return self.cipher.encode(text)
        return text.encode("utf-8")

    def decode_text(self, data: bytes) -> str:
        """The text of a received ``msg_data`` (reverses :meth:`encode_text`); ValueError if not."""
        if self.cipher is not None:
            return self.cipher.decode_text(data)
        return data.decode("utf-8")

    def send_text(self, to_session_id: int, text: str) -> Any:
        """Send a 1:1 text (see :meth:`encode_text`); returns the ack."""
        return self.send_message(to_session_id, self.encode_text(text))

    def send_image(self, to_session_id: int, data: bytes, filename: str) -> Any:
        """Upload ``data`` to :attr:`msfs_url` and send it as a TeamTalk image message.

        ``filename`` gives the type (its extension). Returns the ack; raises
        :class:`~imreactor.client.msfs.MsfsError` if msfs refuses the upload or
        :class:`ClientError` when no msfs URL is known.
        """
        if not self.msfs_url:
            raise ClientError("no msfs URL: log in via login_server or pass msfs_url")
        url = upload(self.msfs_url, data, filename, self.timeout_s)
        return self.send_text(to_session_id, image_text(url))

    def send_group_text(self, group_id: int, text: str) -> Any:
        """Send a text to a group this user is a member of; returns the ack.

        A non-member's message is dropped by the server without an answer: the
        request times out, which raises :class:`ClientError` (as :meth:`request` says).
        """
        return self.send_message(group_id, self.encode_text(text), base.MSG_TYPE_GROUP_TEXT)

    def next_push(self, timeout_s: float | None = None) -> tuple[Message, int]:
        """The next server push ``(message, seq)``; raises ``queue.Empty`` after the timeout."""
        return self.pushes.get(timeout=timeout_s or self.timeout_s)

    def wait_for(self, cls: type[M], timeout_s: float | None = None) -> M:
        """Skip pushes until one of class ``cls`` arrives (others are dropped)."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise queue.Empty(f"no {cls.__name__} within the timeout")
            message, _seq = self.pushes.get(timeout=left)
            if isinstance(message, cls):
                return message

    def wait_closed(self, timeout_s: float | None = None) -> bool:
        """True once the server closed the connection (within the timeout)."""
        return self._closed.wait(timeout_s or self.timeout_s)

    def unread(self) -> Any:
        """``IMUnreadMsgCntRsp``: every session with unread messages, with its latest one."""
        return self.request(
            msg_pb.IMUnreadMsgCntReq(user_id=self.user_id), msg_pb.IMUnreadMsgCntRsp
        )

    def history(
        self,
        session_id: int,
        begin: int = 0,
        count: int = 20,
        session_type: int = base.SESSION_TYPE_SINGLE,
    ) -> Any:
        """``IMGetMsgListRsp``: ids ≤ ``begin`` (0: from the newest), newest first, ≤ ``count``."""
        req = msg_pb.IMGetMsgListReq(
            user_id=self.user_id,
            session_type=base.SessionType.ValueType(session_type),
            session_id=session_id,
            msg_id_begin=begin,
            msg_cnt=count,
        )
        return self.request(req, msg_pb.IMGetMsgListRsp)

    def read_ack(
        self, session_id: int, msg_id: int, session_type: int = base.SESSION_TYPE_SINGLE
    ) -> None:
        """Mark the session read up to ``msg_id`` (no answer; other devices are notified)."""
        self.send(
            msg_pb.IMMsgDataReadAck(
                user_id=self.user_id,
                session_id=session_id,
                msg_id=msg_id,
                session_type=base.SessionType.ValueType(session_type),
            )
        )

    def all_users(self, since: int = 0) -> Any:
        """``IMAllUserRsp``: users changed at or after ``since`` (0: everyone)."""
        req = buddy.IMAllUserReq(user_id=self.user_id, latest_update_time=since)
        return self.request(req, buddy.IMAllUserRsp)

    def users_info(self, user_ids: Iterable[int]) -> Any:
        """``IMUsersInfoRsp``: the users among ``user_ids`` that exist."""
        req = buddy.IMUsersInfoReq(user_id=self.user_id, user_id_list=list(user_ids))
        return self.request(req, buddy.IMUsersInfoRsp)

    def users_status(self, user_ids: Iterable[int]) -> Any:
        """``IMUsersStatRsp``: online (1) or offline (2) for each of ``user_ids``.

        The same request subscribes this connection to those users on a msg_server
        that sends presence by subscription (they count against ``watch_limit`` on
        this connection), but they are not subscribed again after a reconnect:
        :meth:`watch` is for users whose changes matter.
        """
        req = buddy.IMUsersStatReq(user_id=self.user_id, user_id_list=list(user_ids))
        return self.request(req, buddy.IMUsersStatRsp)

    def watch(self, user_ids: Iterable[int]) -> dict[int, int]:
        """Subscribe to the presence of ``user_ids``; ``{user_id: status}`` of those watched.

        Each id is remembered while fewer than ``watch_limit`` are (the first ones
        asked win; the protocol cannot unsubscribe, so there is no unwatch) and
        subscribed on this connection with ``IMUsersStatReq`` (see
        :meth:`ClientSession.watch`); with ``reconnect=True`` every remembered id
        is subscribed again after each reconnect (module docstring). From then on
        their changes arrive as ``IMUserStatNotify`` pushes. The answer maps each
        asked id that is watched to its status now (``USER_STATUS_ONLINE`` /
        ``_OFFLINE``); ids over the limit are missing from it, and it is empty when
        none fit. Raises :class:`ClientError` as :meth:`request` does
        (timeouts included); the ids stay remembered, so a reconnect subscribes them.
        """
        asked = list(dict.fromkeys(user_ids))
        with self._watch_lock:
            for uid in asked:
                if uid not in self._watching and len(self._watching) < self.watch_limit:
                    self._watching[uid] = None
            wanted = [uid for uid in asked if uid in self._watching]
        if not wanted:
            return {}
        rsp = self._watch_on_session(wanted)
        if rsp is None:
            return {}
        mine = set(wanted)
        return {s.user_id: s.status for s in rsp.user_stat_list if s.user_id in mine}

    @property
    def watched(self) -> frozenset[int]:
        """The users :meth:`watch` keeps subscribed, on this connection and after reconnects."""
        with self._watch_lock:
            return frozenset(self._watching)

    def _watch_on_session(
        self, user_ids: list[int], on_answer: Callable[[Any], None] | None = None
    ) -> Any:
        """``IMUsersStatRsp`` of :meth:`ClientSession.watch` on the current session.

        None if the session had no room for any of ``user_ids`` (nothing is sent).
        ``on_answer(rsp)`` runs on the loop thread as the answer arrives, before any
        push that follows it on the connection is delivered.
        """

        def start(session: ClientSession, done: ResponseCallback, timeout: float) -> None:
            def answered(rsp: Any, exc: BaseException | None) -> None:
                if exc is None and on_answer is not None:
                    on_answer(rsp)
                done(rsp, exc)

            if not session.watch(user_ids, answered, user_id=self.user_id, timeout_s=timeout):
                done(None, None)

        return self._on_session(start, None)

    def recent_sessions(self, since: int = 0) -> Any:
        """``IMRecentContactSessionRsp``: sessions updated at or after ``since``, newest first."""
        req = buddy.IMRecentContactSessionReq(user_id=self.user_id, latest_update_time=since)
        return self.request(req, buddy.IMRecentContactSessionRsp)

    def departments(self, since: int = 0) -> Any:
        """``IMDepartmentRsp``: departments changed at or after ``since``."""
        req = buddy.IMDepartmentReq(user_id=self.user_id, latest_update_time=since)
        return self.request(req, buddy.IMDepartmentRsp)

    def group_infos(self, group_ids: Iterable[int]) -> list[Any]:
        """``GroupInfo`` of each existing group among ``group_ids`` (members included)."""
        req = group_pb.IMGroupInfoListReq(user_id=self.user_id)
        for gid in group_ids:
            req.group_version_list.add(group_id=gid, version=0)
        if not req.group_version_list:
            return []
        return list(self.request(req, group_pb.IMGroupInfoListRsp).group_info_list)

    def groups(self, *, include_temporary: bool = True) -> list[Any]:
        """``GroupInfo`` of this user's groups, ascending by id.

        The normal group list (``IMNormalGroupListReq``) has only the groups made by
        an administrator; with ``include_temporary`` the group sessions among the
        recent sessions (groups made by clients) are added.
        """
        normal = self.request(
            group_pb.IMNormalGroupListReq(user_id=self.user_id), group_pb.IMNormalGroupListRsp
        )
        ids = {g.group_id for g in normal.group_version_list}
        if include_temporary:
            for s in self.recent_sessions().contact_session_list:
                if s.session_type == base.SESSION_TYPE_GROUP:
                    ids.add(s.session_id)
        infos = self.group_infos(sorted(ids))
        return sorted(
            (g for g in infos if self.user_id in g.group_member_list), key=lambda g: g.group_id
        )

    def create_group(self, name: str, member_ids: Iterable[int], avatar: str = "") -> Any:
        """Create a temporary group (this user is always a member); ``IMGroupCreateRsp``.

        Raises :class:`ClientError` if the server refuses.
        """
        req = group_pb.IMGroupCreateReq(
            user_id=self.user_id,
            group_type=base.GROUP_TYPE_TMP,
            group_name=name,
            group_avatar=avatar,
            member_id_list=list(member_ids),
        )
        rsp = self.request(req, group_pb.IMGroupCreateRsp)
        if rsp.result_code != 0:
            raise ClientError(f"group {name!r} not created: result {rsp.result_code}")
        return rsp

    def change_group_members(
        self,
        group_id: int,
        member_ids: Iterable[int],
        change_type: int = base.GROUP_MODIFY_TYPE_ADD,
        *,
        check: bool = True,
    ) -> Any:
        """Add (``GROUP_MODIFY_TYPE_ADD``) or remove (``..._DEL``) members; the response.

        Only members may change a group and only its creator removes others; with
        ``check`` a refusal raises :class:`ClientError`.
        """
        req = group_pb.IMGroupChangeMemberReq(
            user_id=self.user_id,
            change_type=base.GroupModifyType.ValueType(change_type),
            group_id=group_id,
            member_id_list=list(member_ids),
        )
        rsp = self.request(req, group_pb.IMGroupChangeMemberRsp)
        if check and rsp.result_code != 0:
            raise ClientError(f"group {group_id} members not changed: result {rsp.result_code}")
        return rsp

    # -- reconnect ------------------------------------------------------------------------

    def _ended(self) -> bool:
        """No more reconnects: closed, kicked, or the credentials were refused."""
        return self._bridge.closing or self._kicked or self._status.gave_up

    def _reconnect_once(self) -> bool:
        """Supervisor thread: one attempt; True once logged in and caught up, False if refused.

        Raises ``ClientError``, ``TimeoutError`` or ``OSError`` for an attempt to repeat.
        """
        assert self._credentials is not None
        name, password, client_type = self._credentials
        self._status.set(ClientStatus.RECONNECTING)
        if self.login_url:
            found = locate(
                self.login_url, self.timeout_s, ssl=self.ssl, ws=self.websocket is not None
            )
            host, port = found.host, found.port
            if found.ws_path is not None:
                self.websocket = found.ws_path  # set here, on the only thread that connects
        else:
            host, port = self.host, self.port
        self._open(host, port)
        res = self._login_once(name, password, client_type)
        if res.result_code != 0 and res.result_code not in NOT_READY:
            log.warning("reconnect: login refused (%d); giving up", res.result_code)
            self._status.give_up(LoginRefused(res.result_code, res.result_string))
            self._status.set(ClientStatus.FAILED)
            self._abort_connection()
            return False
        if res.result_code != 0:
            raise ClientError(f"login refused for now (result {res.result_code})")
        self._resubscribe()
        self._catchup.catch_up(self, self._deliver)
        return True

    def _reconnect_failed(self) -> None:
        """Supervisor thread, after a failed attempt: drop what it connected; offline again."""
        self._abort_connection()
        self._status.set(ClientStatus.OFFLINE)

    def _reconnected(self) -> None:
        """Supervisor thread, after a successful attempt: online again."""
        log.info("reconnected to %s:%d as user %d", self.host, self.port, self.user_id)
        self._online.set()
        self._status.set(ClientStatus.ONLINE)

    def _resubscribe(self) -> None:
        """Subscribe the remembered users again; queue their statuses as notifies."""
        with self._watch_lock:
            ids = list(self._watching)
        if not ids:
            return

        def queue_statuses(rsp: Any) -> None:
            # On the loop thread, as the answer arrives: a live notify that follows
            # it on the connection is then queued after it, never overtaken by it.
            for stat in rsp.user_stat_list:
                self._deliver(buddy.IMUserStatNotify(user_stat=stat), 0)

        self._watch_on_session(ids, queue_statuses)

    # -- closing --------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection and stop the client's threads. Idempotent.

        Waits that are under way in other threads fail with :class:`ClientError`.
        """
        if self._supervisor is not None:
            self._supervisor.stop()
        if self._bridge.close_waits():
            self._status.set(ClientStatus.CLOSED)
        self._bridge.stop(self._abort_now)
        if self._supervisor is not None:
            self._supervisor.join()
        if self._notifier is not None:
            self._notifier.close()
