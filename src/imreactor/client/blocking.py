"""A blocking client for scripts and tests: the reactor runs on a private thread.

Every method is safe to call from the calling thread (not from the client's own
loop thread). Server pushes (messages, kicks, notifications) are queued and read
with :meth:`Client.next_push` / :meth:`Client.wait_for`.
"""

from __future__ import annotations

import concurrent.futures
import json
import queue
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any, TypeVar

from google.protobuf.message import Message

from ..net import Connection, EventLoop
from ..pdu.imconn import CLIENT_SIDE, Keepalive, LinkPolicy
from ..pdu.proto import im_base_define_pb2 as base
from ..pdu.proto import im_buddy_pb2 as buddy
from ..pdu.proto import im_login_pb2 as login_pb
from ..pdu.proto import im_message_pb2 as msg_pb
from .session import ClientSession, password_digest

M = TypeVar("M", bound=Message)
T = TypeVar("T")


class ClientError(RuntimeError):
    """A request failed: refused by the server, timed out, or the connection closed."""


class Client:
    """One logged-in (or about to be) user connection, driven synchronously."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        policy: LinkPolicy = CLIENT_SIDE,
        timeout_s: float = 10.0,
    ) -> None:
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self.pushes: queue.Queue[tuple[Message, int]] = queue.Queue()
        self.user_id = 0
        self.user_info: Any = None
        self.closed_with: BaseException | None = None
        self._closed = threading.Event()
        self._loop = EventLoop()
        self._keepalive = Keepalive(self._loop)
        connected: concurrent.futures.Future[None] = concurrent.futures.Future()

        def on_connected() -> None:
            if not connected.done():
                connected.set_result(None)

        def on_failed(conn: Connection | None, exc: BaseException | None) -> None:
            if not connected.done():
                connected.set_exception(ClientError(f"cannot connect to {host}:{port}: {exc}"))

        self._session = ClientSession(self._push, self._lost, on_connected, self._keepalive, policy)
        self._conn: Connection | None = None
        self._thread = threading.Thread(target=self._loop.run, name="imreactor-client", daemon=True)
        self._thread.start()

        def start() -> None:
            try:
                self._conn = self._loop.connect(host, port, self._session, timeout_s=timeout_s)
            except OSError as exc:
                on_failed(None, exc)
                return
            self._conn.add_close_callback(on_failed)

        self._loop.call_soon_threadsafe(start)
        try:
            connected.result(timeout_s + 1)
        except BaseException:
            self.close()
            raise

    # -- construction helpers -------------------------------------------------------------

    @classmethod
    def connect(cls, host: str, port: int, **kw: Any) -> Client:
        """Connect straight to a msg_server."""
        return cls(host, port, **kw)

    @classmethod
    def via_login_server(cls, url: str, **kw: Any) -> Client:
        """Ask login_server's ``/msg_server`` where to go (``url``: ``http://host:port``)."""
        with urllib.request.urlopen(url.rstrip("/") + "/msg_server", timeout=10) as rsp:
            answer = json.loads(rsp.read())
        if answer.get("code") != 0:
            raise ClientError(f"login_server refused: {answer}")
        return cls(answer["priorIP"], int(answer["port"]), **kw)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- loop-side callbacks --------------------------------------------------------------

    def _push(self, message: Message, seq: int) -> None:
        self.pushes.put((message, seq))

    def _lost(self, exc: BaseException | None) -> None:
        self.closed_with = exc
        self._closed.set()

    # -- running things on the loop -------------------------------------------------------

    def _call(self, fn: Callable[[], T]) -> T:
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        return fut.result(self.timeout_s)

    @property
    def is_connected(self) -> bool:
        return not self._closed.is_set()

    def request(self, message: Message, response: type[M], timeout_s: float | None = None) -> M:
        """Send ``message`` and wait for the response of type ``response``."""
        fut: concurrent.futures.Future[M] = concurrent.futures.Future()
        timeout = timeout_s or self.timeout_s

        def done(msg: Any, exc: BaseException | None) -> None:
            if exc is not None:
                fut.set_exception(ClientError(str(exc)))
            else:
                fut.set_result(msg)

        def send() -> None:
            if not self._session.connected:
                fut.set_exception(ClientError("not connected"))
                return
            self._session.request(message, done, timeout_s=timeout, response=response)

        self._loop.call_soon_threadsafe(send)
        return fut.result(timeout + 1)

    def send(self, message: Message, seq: int = 0, *, partial: bool = False) -> None:
        """Send without waiting for anything."""
        self._call(lambda: self._session.send(message, seq, partial=partial))

    def send_raw(self, data: bytes) -> None:
        """Write raw bytes (for tests of bad input)."""

        def write() -> None:
            if self._conn is not None:
                self._conn.write(data)

        self._call(write)

    # -- the IM API -----------------------------------------------------------------------

    def login(
        self,
        user_name: str,
        password: str,
        client_type: int = base.CLIENT_TYPE_WINDOWS,
        *,
        check: bool = True,
    ) -> Any:
        """Log in; returns ``IMLoginRes``. With ``check``, a refusal raises :class:`ClientError`."""
        req = login_pb.IMLoginReq(
            user_name=user_name,
            password=password_digest(password),
            online_status=base.USER_STATUS_ONLINE,
            client_type=base.ClientType.ValueType(client_type),
            client_version="imreactor-sdk",
        )
        res = self.request(req, login_pb.IMLoginRes)
        if res.result_code == 0:
            self.user_id = res.user_info.user_id
            self.user_info = res.user_info
        elif check:
            raise ClientError(f"login refused: result {res.result_code} {res.result_string}")
        return res

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
        return self.request(msg, msg_pb.IMMsgDataAck)

    def send_text(self, to_session_id: int, text: str) -> Any:
        """Send a 1:1 text (UTF-8 bytes as ``msg_data``); returns the ack."""
        return self.send_message(to_session_id, text.encode("utf-8"))

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
        self.send(
            msg_pb.IMMsgDataReadAck(
                user_id=self.user_id,
                session_id=session_id,
                msg_id=msg_id,
                session_type=base.SessionType.ValueType(session_type),
            )
        )

    def all_users(self, since: int = 0) -> Any:
        req = buddy.IMAllUserReq(user_id=self.user_id, latest_update_time=since)
        return self.request(req, buddy.IMAllUserRsp)

    def close(self) -> None:
        """Close the connection and stop the client's thread. Idempotent."""
        if not self._thread.is_alive():
            return

        def shutdown() -> None:
            if self._conn is not None:
                self._conn.abort()
            self._loop.stop()

        self._loop.call_soon_threadsafe(shutdown)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()
