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
"""

from __future__ import annotations

import concurrent.futures
import enum
import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from ssl import SSLContext
from typing import Any, TypeVar

from google.protobuf.message import Message

from ..net import Backoff, EventLoop, Transport
from ..pdu.imconn import CLIENT_SIDE, Keepalive, LinkPolicy, ResponseCallback
from ..pdu.kinds import GROUP_MSG_TYPES, NOT_READY
from ..pdu.password import password_digest
from ..pdu.proto import im_base_define_pb2 as base
from ..pdu.proto import im_buddy_pb2 as buddy
from ..pdu.proto import im_group_pb2 as group_pb
from ..pdu.proto import im_login_pb2 as login_pb
from ..pdu.proto import im_message_pb2 as msg_pb
from .crypto import TextCipher
from .locate import MSG_SERVER_PATH, LocateError, msg_server_address
from .session import DEFAULT_WATCH_LIMIT, ClientSession

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)
T = TypeVar("T")

#: Reconnect schedule of a client: quick at first (a restarted server is back in a
#: second or two), then gentler. Jitter spreads many clients cut off together.
DEFAULT_RECONNECT_DELAYS_S: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
#: Most messages caught up per session after one reconnect.
CATCH_UP_MAX_PER_SESSION = 1000
#: Messages one history request asks for (the server's cap is 200).
HISTORY_PAGE = 200

SessionKey = tuple[int, int]
"""``(session_type, session_id)``: a peer user id for 1:1 sessions, a group id for groups."""


class ClientError(RuntimeError):
    """A request failed: refused by the server, timed out, or the connection closed."""


class LoginRefused(ClientError):
    """The server refused the login; :attr:`result_code` says why (6: bad credentials)."""

    def __init__(self, result_code: int, result_string: str) -> None:
        super().__init__(f"login refused: {result_string or 'result ' + str(result_code)}")
        self.result_code = result_code
        self.result_string = result_string


class ClientStatus(enum.StrEnum):
    """What :attr:`Client.status` says, and what ``on_status`` is called with."""

    CONNECTED = "connected"  #: connected, not logged in yet
    ONLINE = "online"  #: logged in (after a reconnect: and caught up)
    OFFLINE = "offline"  #: the connection dropped; a reconnect is scheduled
    RECONNECTING = "reconnecting"  #: a reconnect attempt is under way
    KICKED = "kicked"  #: the server kicked this login (another one of the same class)
    FAILED = "failed"  #: reconnecting stopped: the saved credentials were refused
    CLOSED = "closed"  #: closed for good (by :meth:`Client.close` or without reconnect)


def session_of(message: Any, my_user_id: int) -> SessionKey:
    """The session an ``IMMsgData`` belongs to, as seen by ``my_user_id``."""
    if message.msg_type in GROUP_MSG_TYPES:
        return (base.SESSION_TYPE_GROUP, message.to_session_id)
    if message.from_user_id == my_user_id:
        return (base.SESSION_TYPE_SINGLE, message.to_session_id)
    return (base.SESSION_TYPE_SINGLE, message.from_user_id)


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


PushCallback = Callable[[Message, int], Any]
MessageCallback = Callable[[Any], Any]
StatusCallback = Callable[[ClientStatus], Any]


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
    ) -> None:
        if watch_limit < 0:
            raise ValueError(f"watch_limit must be at least 0, not {watch_limit}")
        self.host = host
        #: Local address every connection of this client is bound to (None: the OS picks).
        self.source_host = source_host
        self.port = port
        self.timeout_s = timeout_s
        self.policy = policy
        self.pushes: queue.Queue[tuple[Message, int]] = queue.Queue()
        self.user_id = 0
        self.user_info: Any = None
        self.closed_with: BaseException | None = None
        self.cipher = TextCipher(aes_key) if aes_key is not None else None
        self.reconnect = reconnect
        self.login_url = login_url
        self.backoff = backoff or Backoff(DEFAULT_RECONNECT_DELAYS_S, jitter=0.2)
        #: Successful reconnects (each followed by a catch-up) so far.
        self.reconnects = 0
        #: Messages queued by catch-ups so far.
        self.caught_up = 0
        self.status = ClientStatus.CONNECTED
        self.watch_limit = watch_limit
        #: TLS context of every connection (None: plain TCP).
        self.ssl = ssl
        self.server_hostname = server_hostname
        self._queue_pushes = queue_pushes
        self._on_push = on_push
        self._on_message = on_message
        self._on_kick = on_kick
        self._on_status = on_status
        self._closed = threading.Event()  # the current connection is down
        self._online = threading.Event()  # logged in (and caught up)
        self._closing = False
        self._kicked = False
        self._gave_up = False  # a reconnect's login was refused
        self._credentials: tuple[str, str, int] | None = None
        # Catch-up state (reconnect mode), guarded by _lock: what was queued per
        # session, where each session stood at the first login and when the link
        # dropped, and live pushes held back while a catch-up runs.
        self._lock = threading.Lock()
        self._seen: dict[SessionKey, _Seen] = {}
        self._baseline: dict[SessionKey, int] = {}
        self._known: dict[SessionKey, int] = {}
        self._online_since = 0
        self._catching_up = False
        self._held: list[tuple[Message, int]] = []
        # Users to keep subscribed across reconnects, in the order first asked (guarded
        # by _lock); a dict for that order, since the first ones fit if the bound shrinks.
        self._watching: dict[int, None] = {}
        self._inflight: set[concurrent.futures.Future[Any]] = set()
        self._gen = 0
        self._loop = EventLoop()
        self._keepalive = Keepalive(self._loop)
        self._session: ClientSession | None = None
        self._logged_in_session: ClientSession | None = None
        self._conn: Transport | None = None
        self._thread = threading.Thread(target=self._loop.run, name="imreactor-client", daemon=True)
        self._thread.start()
        self._events: queue.Queue[tuple[Message, int] | ClientStatus | None] | None = None
        self._notifier: threading.Thread | None = None
        if on_push or on_message or on_kick or on_status:
            self._events = queue.Queue()
            self._notifier = threading.Thread(
                target=self._notify_loop, name="imreactor-client-callbacks", daemon=True
            )
            self._notifier.start()
        self._wake = threading.Event()  # the supervisor has work (or must stop)
        self._stopping = threading.Event()  # close() was called
        self._status_lock = threading.Lock()
        self._supervisor: threading.Thread | None = None
        try:
            self._open(host, port)
        except BaseException:
            self.close()
            raise
        if reconnect:
            self._supervisor = threading.Thread(
                target=self._supervise, name="imreactor-client-reconnect", daemon=True
            )
            self._supervisor.start()

    # -- construction helpers -------------------------------------------------------------

    @classmethod
    def connect(cls, host: str, port: int, **kw: Any) -> Client:
        """Connect straight to a msg_server."""
        return cls(host, port, **kw)

    @classmethod
    def via_login_server(cls, url: str, **kw: Any) -> Client:
        """Ask login_server's ``/msg_server`` where to go (``url``: ``http://host:port``).

        With ``reconnect=True``, reconnects ask the same login_server again. With
        ``ssl``, an ``https://`` login_server is verified with the same context.
        """
        ctx = kw.get("ssl")
        host, port = locate_msg_server(url, kw.get("timeout_s", 10.0), ssl=ctx)
        if kw.get("reconnect"):
            kw.setdefault("login_url", url)
        return cls(host, port, **kw)

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
            _resolve(connected, None)

        def on_failed(conn: Transport | None, exc: BaseException | None) -> None:
            _fail(connected, ClientError(f"cannot connect to {host}:{port}: {exc}"))

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
                conn = self._loop.connect(
                    host,
                    port,
                    session,
                    timeout_s=self.timeout_s,
                    source=source,
                    ssl=self.ssl,
                    server_hostname=self.server_hostname,
                )
            except OSError as exc:
                on_failed(None, exc)
                return
            self._conn = conn
            conn.add_close_callback(on_failed)

        self._loop.call_soon_threadsafe(start)
        self._wait(connected, self.timeout_s + 1)
        self.host, self.port = host, port

    def _abort_connection(self) -> None:
        def abort() -> None:
            if self._conn is not None:
                self._conn.abort()

        self._loop.call_soon_threadsafe(abort)

    def _wait(self, fut: concurrent.futures.Future[T], timeout_s: float) -> T:
        """Wait for ``fut``; :meth:`close` fails every such wait at once."""
        with self._lock:
            if self._closing:
                raise ClientError("client closed")
            self._inflight.add(fut)
        try:
            return fut.result(timeout_s)
        finally:
            with self._lock:
                self._inflight.discard(fut)

    # -- loop-side callbacks --------------------------------------------------------------

    def _push(self, gen: int, message: Message, seq: int) -> None:
        if gen != self._gen:
            return  # a connection given up on
        if isinstance(message, login_pb.IMKickUser):
            self._kicked = True
        if self.reconnect and isinstance(message, msg_pb.IMMsgData):
            with self._lock:
                if not self._mark_seen(session_of(message, self.user_id), message.msg_id):
                    return
                if self._catching_up:
                    # Queued after the missed ones, so each session stays in id order.
                    self._held.append((message, seq))
                    return
        self._deliver(message, seq)

    def _deliver(self, message: Message, seq: int) -> None:
        if self._queue_pushes:
            self.pushes.put((message, seq))
        if self._events is not None:
            self._events.put((message, seq))

    def _lost(self, gen: int, exc: BaseException | None) -> None:
        if gen != self._gen:
            return
        self._online.clear()
        self._closed.set()
        with self._status_lock:
            if self._gave_up:
                return  # closed_with keeps the refusal
            self.closed_with = exc
        if self._closing:
            return
        if self._kicked:
            self._set_status(ClientStatus.KICKED)
        elif self.reconnect and self._credentials is not None:
            with self._lock:
                if not self._catching_up:
                    # Where each session stood when the link dropped: what comes live
                    # after a re-login must not hide what was missed in between.
                    self._catching_up = True
                    self._known = {key: seen.newest for key, seen in self._seen.items()}
            self._set_status(ClientStatus.OFFLINE)
            self._wake.set()
        else:
            self._set_status(ClientStatus.CLOSED)

    def _set_status(self, status: ClientStatus) -> None:
        with self._status_lock:
            if status is self.status:
                return
            self.status = status
            if self._events is not None:
                self._events.put(status)

    def _notify_loop(self) -> None:
        assert self._events is not None
        while True:
            event = self._events.get()
            if event is None:
                return
            try:
                if isinstance(event, ClientStatus):
                    if self._on_status is not None:
                        self._on_status(event)
                    continue
                message, seq = event
                if self._on_push is not None:
                    self._on_push(message, seq)
                if self._on_message is not None and isinstance(message, msg_pb.IMMsgData):
                    self._on_message(message)
                if self._on_kick is not None and isinstance(message, login_pb.IMKickUser):
                    self._on_kick(message)
            except Exception:
                log.exception("client callback failed for %r", event)

    # -- running things on the loop -------------------------------------------------------

    def _call(self, fn: Callable[[], T]) -> T:
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                _resolve(fut, fn())
            except BaseException as exc:
                _fail(fut, exc)

        self._loop.call_soon_threadsafe(run)
        return self._wait(fut, self.timeout_s)

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
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        timeout = timeout_s or self.timeout_s

        def done(msg: Any, exc: BaseException | None) -> None:
            if exc is not None:
                _fail(fut, ClientError(str(exc)))
            else:
                _resolve(fut, msg)

        def run() -> None:
            session = self._session
            if session is None or not session.connected:
                done(None, ConnectionError("not connected"))
                return
            if not self._may_send(session, login):
                done(None, ConnectionError("not logged in yet (reconnecting)"))
                return
            try:
                start(session, done, timeout)
            except Exception as exc:
                done(None, exc)

        self._loop.call_soon_threadsafe(run)
        return self._wait(fut, timeout + 1)

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

        self._call(write)

    def send_raw(self, data: bytes) -> None:
        """Write raw bytes (for tests of bad input)."""

        def write() -> None:
            if self._conn is not None:
                self._conn.write(data)

        self._call(write)

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
        if self.reconnect and not self._online_since:
            self._online_since = res.server_time
            self._take_baseline()
        self._online.set()
        self._set_status(ClientStatus.ONLINE)
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
            with self._lock:
                self._mark_seen((ack.session_type, ack.session_id), ack.msg_id)
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

    def send_group_text(self, group_id: int, text: str) -> Any:
        """Send a text to a group this user is a member of; returns the ack.

        A non-member's message is dropped by the server without an answer: the
        request times out.
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
        with self._lock:
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
        with self._lock:
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

    # -- reconnect and catch-up -----------------------------------------------------------

    def _mark_seen(self, key: SessionKey, msg_id: int) -> bool:
        """Record a queued (or acked) message; False if it was already. Hold ``_lock``."""
        seen = self._seen.get(key)
        if seen is None:
            seen = self._seen[key] = _Seen()
        return seen.add(msg_id)

    def _take_baseline(self) -> None:
        """Where each session stood at the first login: older messages are not "missed"."""
        try:
            sessions = self.recent_sessions().contact_session_list
        except (ClientError, TimeoutError) as exc:
            log.warning("recent sessions at login failed (%s); catch-up uses time only", exc)
            return
        with self._lock:
            for s in sessions:
                self._baseline[(s.session_type, s.session_id)] = s.latest_msg_id

    def _ended(self) -> bool:
        """No more reconnects: closed, kicked, or the credentials were refused."""
        return self._closing or self._kicked or self._gave_up

    def _supervise(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._closing:
                return
            if self._closed.is_set() and self._credentials is not None and not self._ended():
                try:
                    self._reconnect()
                except Exception:
                    if self._closing:
                        return
                    log.exception("reconnect failed")

    def _reconnect(self) -> None:
        """Reconnect with backoff until logged in and caught up, refused, or closed."""
        assert self._credentials is not None
        name, password, client_type = self._credentials
        while not self._ended():
            if self._stopping.wait(self.backoff.delay()):
                return
            self._set_status(ClientStatus.RECONNECTING)
            try:
                if self.login_url:
                    host, port = locate_msg_server(self.login_url, self.timeout_s, ssl=self.ssl)
                else:
                    host, port = self.host, self.port
                self._open(host, port)
                res = self._login_once(name, password, client_type)
                if res.result_code != 0 and res.result_code not in NOT_READY:
                    log.warning("reconnect: login refused (%d); giving up", res.result_code)
                    with self._status_lock:
                        self._gave_up = True
                        self.closed_with = LoginRefused(res.result_code, res.result_string)
                    self._set_status(ClientStatus.FAILED)
                    self._abort_connection()
                    return
                if res.result_code != 0:
                    raise ClientError(f"login refused for now (result {res.result_code})")
                self._resubscribe()
                self._catch_up()
            except (ClientError, TimeoutError, OSError) as exc:
                if self._ended():
                    return
                log.info("reconnect attempt %d failed: %s", self.backoff.failures, exc)
                self._abort_connection()
                self._set_status(ClientStatus.OFFLINE)
                continue
            self.backoff.reset()
            self.reconnects += 1
            log.info("reconnected to %s:%d as user %d", self.host, self.port, self.user_id)
            self._online.set()
            self._set_status(ClientStatus.ONLINE)
            return

    def _resubscribe(self) -> None:
        """Subscribe the remembered users again; queue their statuses as notifies."""
        with self._lock:
            ids = list(self._watching)
        if not ids:
            return

        def queue_statuses(rsp: Any) -> None:
            # On the loop thread, as the answer arrives: a live notify that follows
            # it on the connection is then queued after it, never overtaken by it.
            for stat in rsp.user_stat_list:
                self._deliver(buddy.IMUserStatNotify(user_stat=stat), 0)

        self._watch_on_session(ids, queue_statuses)

    def _catch_up(self) -> None:
        """Queue what was missed while offline, then what arrived live meanwhile."""
        latest: dict[SessionKey, int] = {}
        for u in self.unread().unreadinfo_list:
            latest[(u.session_type, u.session_id)] = u.latest_msg_id
        for s in self.recent_sessions().contact_session_list:
            key = (s.session_type, s.session_id)
            latest[key] = max(latest.get(key, 0), s.latest_msg_id)
        missed: list[tuple[SessionKey, Any]] = []
        for key, newest in sorted(latest.items()):
            with self._lock:
                known = max(self._known.get(key, 0), self._baseline.get(key, 0))
            if newest > known:
                fetched = self._fetch_after(key, known, newest)
                log.debug(
                    "catch-up %s: ids %d..%d, %d fetched", key, known + 1, newest, len(fetched)
                )
                missed.extend((key, m) for m in fetched)
        with self._lock:
            for (stype, sid), m in missed:
                if m.create_time < self._online_since or not self._mark_seen(
                    (stype, sid), m.msg_id
                ):
                    continue
                self._deliver(self._as_push(stype, sid, m), 0)
                self.caught_up += 1
            held, self._held = self._held, []
            self._catching_up = False
            for message, seq in held:
                self._deliver(message, seq)

    def _fetch_after(self, key: SessionKey, known: int, newest: int) -> list[Any]:
        """Messages of session ``key`` with ids in ``(known, newest]``, ascending."""
        stype, sid = key
        floor = max(known, newest - CATCH_UP_MAX_PER_SESSION)
        found: dict[int, Any] = {}
        begin = newest
        while begin > floor:
            page = self.history(sid, begin, min(begin - floor, HISTORY_PAGE), stype).msg_list
            if not page:
                break
            for m in page:
                if m.msg_id > floor:
                    found[m.msg_id] = m
            begin = min(m.msg_id for m in page) - 1
        return [found[i] for i in sorted(found)]

    def _as_push(self, session_type: int, session_id: int, m: Any) -> Any:
        """A history ``MsgInfo`` as the ``IMMsgData`` the server would have pushed."""
        if session_type == base.SESSION_TYPE_GROUP:
            to = session_id
        else:
            to = session_id if m.from_session_id == self.user_id else self.user_id
        return msg_pb.IMMsgData(
            from_user_id=m.from_session_id,
            to_session_id=to,
            msg_id=m.msg_id,
            create_time=m.create_time,
            msg_type=m.msg_type,
            msg_data=m.msg_data,
        )

    # -- closing --------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection and stop the client's threads. Idempotent.

        Waits that are under way in other threads fail with :class:`ClientError`.
        """
        with self._lock:
            already = self._closing
            self._closing = True
            inflight, self._inflight = self._inflight, set()
        for fut in inflight:
            _fail(fut, ClientError("client closed"))
        self._stopping.set()
        self._wake.set()
        if not already:
            self._set_status(ClientStatus.CLOSED)
        me = threading.current_thread()
        if self._thread.is_alive():

            def shutdown() -> None:
                if self._conn is not None:
                    self._conn.abort()
                self._loop.stop()

            self._loop.call_soon_threadsafe(shutdown)
            if me is not self._thread:
                self._thread.join(5)
            if not self._thread.is_alive():
                self._loop.close()
        if self._supervisor is not None and me is not self._supervisor:
            self._supervisor.join(5)
        if self._events is not None:
            self._events.put(None)
            if self._notifier is not None and me is not self._notifier:
                self._notifier.join(5)


def _resolve(fut: concurrent.futures.Future[T], result: T) -> None:
    """Complete ``fut`` with ``result`` unless it is already (a close and an answer may race)."""
    try:
        fut.set_result(result)
    except concurrent.futures.InvalidStateError:
        pass  # completed first by the other side


def _fail(fut: concurrent.futures.Future[Any], exc: BaseException) -> None:
    """Fail ``fut`` with ``exc`` unless it is already complete."""
    try:
        fut.set_exception(exc)
    except concurrent.futures.InvalidStateError:
        pass  # completed first by the other side


def locate_msg_server(
    url: str, timeout_s: float = 10.0, *, ssl: SSLContext | None = None
) -> tuple[str, int]:
    """Ask login_server (``http(s)://host:port``) which msg_server to use: ``(host, port)``.

    With ``ssl`` the port is the msg_server's TLS port (``"tlsPort"``), and an
    ``https://`` login_server is verified with that context. Raises
    :class:`ClientError` with one readable line if login_server cannot be reached,
    answers garbage, has no msg_server to offer, or (with ``ssl``) offers one
    without TLS.
    """
    where = url.rstrip("/") + MSG_SERVER_PATH
    https = ssl if where.startswith("https:") else None
    try:
        with urllib.request.urlopen(where, timeout=timeout_s, context=https) as rsp:
            answer = json.loads(rsp.read())
    except urllib.error.URLError as exc:
        raise ClientError(f"cannot reach login_server at {url}: {exc.reason}") from None
    except (OSError, ValueError) as exc:
        raise ClientError(f"bad answer from login_server at {url}: {exc}") from None
    try:
        return msg_server_address(answer, url, tls=ssl is not None)
    except LocateError as exc:
        raise ClientError(str(exc)) from None
