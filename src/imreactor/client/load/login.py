"""How each connection of a run gets to a logged-in session: :class:`Logins`.

A connection asks login_server ``GET /msg_server`` where to go (:mod:`.query`),
connects there and logs in (``IMLoginReq``); ``--msg-server`` sends everyone to one
msg_server instead, ``--msg-servers A,B,...`` pins user ``i`` to entry ``i mod n``
(all of its connections), ``--echo`` connects to a PDU echo server with no login.
``--ws`` speaks WebSocket to msg_server instead of TCP (the answer's ``wsURL``, or
``wssURL`` with ``--tls``; with ``--msg-server`` the address is a ``ws_port``, path
``/``): one PDU per message, everything else the same.
"Not ready" answers (no msg_server registered, refusals 3/4/5, refused connects) are
retried until ``login_retry_s`` after the endpoint's ``first_try``, each after a wait
drawn around :data:`LOGIN_RETRY_DELAY_S`; anything else is a failed login.

Loop thread only. Every connection it opens is tracked until it closes;
:meth:`Logins.shutdown` closes them all at the end.
"""

from __future__ import annotations

import random
import ssl
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from ...net import EventLoop, Protocol, Transport
from ...net.connection import parse_address
from ...pdu.imconn import CLIENT_SIDE, Keepalive
from ...pdu.kinds import NOT_READY
from ...pdu.password import password_digest
from ...pdu.proto import im_base_define_pb2 as base
from ...pdu.proto import im_login_pb2 as login_pb
from ..locate import MSG_SERVER_PATH, LocateError, msg_server_address, msg_server_ws_address
from ..session import ClientSession
from ..tls import client_context
from .options import LoadOptions
from .query import MsgServerQuery
from .records import CONNECTING, IDLE, LOGIN, QUERY, READY, Endpoint

#: Mean wait before a login is tried again; each wait is drawn from half to one and a half
#: times it, so clients refused together (a busy db_proxy, a restarting server) do not all
#: return together.
LOGIN_RETRY_DELAY_S = 0.2
#: Closing at the end waits this long for the servers to close their side.
SHUTDOWN_WAIT_S = 3.0


class Logins:
    """Logs endpoints in the way ``options`` say (module docstring).

    An :meth:`attempt` ends in one call: ``logged_in(ep)`` (its ``session`` and
    ``conn`` set; ``user_id`` known) or ``failed(ep, kind, why)`` (it will not pass, or
    no time is left; ``kind`` is an error counter). Later, ``dropped(ep, exc)`` when
    the connection of a logged-in endpoint closes, unless :attr:`closing`. Pushes of
    every session go to ``push(ep, message)``.
    """

    def __init__(
        self,
        loop: EventLoop,
        options: LoadOptions,
        *,
        push: Callable[[Endpoint, Any], None],
        logged_in: Callable[[Endpoint], None],
        failed: Callable[[Endpoint, str, str], None],
        dropped: Callable[[Endpoint, BaseException | None], None],
    ) -> None:
        self.loop = loop
        self.options = options
        self._push = push
        self._logged_in = logged_in
        self._failed = failed
        self._dropped = dropped
        self._echo = options.echo is not None
        self._keepalive = Keepalive(loop)
        self._source: tuple[str, int] | None = None
        #: TLS for msg_server connections (and an https:// login_server); None: plain.
        self._ssl = client_context(options.ca_file) if options.tls or options.ca_file else None
        if options.source_host is not None:
            self._source = (options.source_host, 0)
        self._http_host = ""
        self._query_ssl: ssl.SSLContext | None = None
        #: The WebSocket path asked for at a pinned msg_server (None: TCP).
        self._ws_path = "/" if options.ws else None
        #: Where connections go without asking login_server: user i to entry i mod n.
        self._direct: list[tuple[str, int]] = []
        self._target = ("", 0)
        if options.echo is not None:
            self._direct = [parse_address(options.echo, 7000)]
            self.target_text = f"echo {options.echo}"
        elif options.msg_server is not None:
            self._direct = [parse_address(options.msg_server, 8000)]
            self.target_text = f"msg_server {options.msg_server}"
        elif options.msg_servers is not None:
            self._direct = [parse_address(entry, 8000) for entry in options.msg_servers]
            self.target_text = f"msg_servers {','.join(options.msg_servers)} (round-robin)"
        else:
            url = urlsplit(options.login_url)
            https = url.scheme == "https"
            self._target = (url.hostname or "127.0.0.1", url.port or (443 if https else 80))
            self._query_ssl = self._ssl or client_context() if https else None
            self._http_host = url.netloc
            self.target_text = options.login_url
        self._conns: set[Transport] = set()
        #: Set by :meth:`shutdown`: no more attempts, and closes are no drops.
        self.closing = False
        #: Attempts made again after a failure that may pass.
        self.retries = 0

    def attempt(self, ep: Endpoint) -> None:
        """Try to log ``ep`` in (again): ask where, connect, log in."""
        if self.closing:
            return
        if self._direct:
            host, port = self._direct[ep.user.index % len(self._direct)]
            self._connect(ep, host, port, self._ws_path)
            return
        ep.state = QUERY

        def answered(answer: dict[str, Any] | None, error: str) -> None:
            if self.closing:
                return
            if answer is None:
                self._retry(ep, "login_failures", f"login_server: {error}")
                return
            tls = self._ssl is not None
            path: str | None = None
            try:
                if self.options.ws:
                    host, port, path, _ = msg_server_ws_address(answer, self.target_text, tls=tls)
                else:
                    host, port = msg_server_address(answer, self.target_text, tls=tls)
            except LocateError as exc:
                if exc.code is None:
                    self._failed(ep, "login_failures", str(exc))
                else:
                    self._retry(ep, "login_failures", str(exc), code=exc.code)
                return
            self._connect(ep, host, port, path)

        query = MsgServerQuery(self._http_host, MSG_SERVER_PATH, answered)
        try:
            conn = self._open(*self._target, query, self._query_ssl)
        except OSError as exc:
            self._retry(ep, "login_failures", f"login_server: {exc}")
            return
        self._track(conn)
        # An answer that never comes: the abort ends the query through connection_lost.
        timer = self.loop.call_later(self.options.login_timeout_s, conn.abort)
        conn.add_close_callback(lambda c, exc: timer.cancel())

    def _connect(self, ep: Endpoint, host: str, port: int, ws_path: str | None) -> None:
        ep.state = CONNECTING
        session = ClientSession(
            lambda message, seq: self._push(ep, message),
            on_connected=lambda: self._connected(ep),
            keepalive=self._keepalive,
            policy=CLIENT_SIDE,
        )
        try:
            conn = self._open(host, port, session, self._ssl, ws_path)
        except OSError as exc:
            self._retry(ep, "login_failures", f"connect to {host}:{port}: {exc}")
            return
        ep.session, ep.conn = session, conn
        self._track(conn)
        conn.add_close_callback(lambda c, exc: self._closed(ep, c, exc))

    def _open(
        self,
        host: str,
        port: int,
        protocol: Protocol,
        context: ssl.SSLContext | None,
        ws_path: str | None = None,
    ) -> Transport:
        """A connection for one try, from the source address; OSError if it cannot start.

        ``ws_path``: a WebSocket to that path (its upgrade bounded by the login timeout)."""
        timeout_s = self.options.login_timeout_s
        return self.loop.connect(
            host,
            port,
            protocol,
            timeout_s=timeout_s,
            source=self._source,
            ssl=context,
            handshake_timeout_s=timeout_s,
            websocket=ws_path,
        )

    def _track(self, conn: Transport) -> None:
        self._conns.add(conn)
        conn.add_close_callback(self._untrack)

    def _untrack(self, conn: Transport, exc: BaseException | None) -> None:
        self._conns.discard(conn)
        if self.closing and not self._conns:
            self.loop.stop()

    def _connected(self, ep: Endpoint) -> None:
        if self._echo:
            ep.user.user_id = ep.user.index + 1
            self._logged_in(ep)
            return
        ep.state = LOGIN
        assert ep.session is not None
        req = login_pb.IMLoginReq(
            user_name=ep.user.name,
            password=password_digest(self.options.password),
            online_status=base.USER_STATUS_ONLINE,
            client_type=base.ClientType.ValueType(ep.client_type),
            client_version="imreactor-load",
        )

        def answered(res: Any, exc: BaseException | None) -> None:
            if ep.state != LOGIN:
                return
            if exc is not None:
                self._retry_closing(ep, "login_failures", f"{ep.user.name}: login: {exc}")
            elif res.result_code == 0:
                ep.user.user_id = res.user_info.user_id
                self._logged_in(ep)
            else:
                why = f"{ep.user.name}: login refused: {res.result_code} {res.result_string}"
                self._retry_closing(ep, "refused_logins", why, code=res.result_code)

        ep.session.request(
            req, answered, timeout_s=self.options.login_timeout_s, response=login_pb.IMLoginRes
        )

    def _retry_closing(self, ep: Endpoint, kind: str, why: str, code: int | None = None) -> None:
        conn = ep.conn
        ep.state = IDLE  # its close is no disconnect
        ep.session = ep.conn = None
        if conn is not None:
            conn.close()
        self._retry(ep, kind, why, code=code)

    def _retry(self, ep: Endpoint, kind: str, why: str, code: Any = None) -> None:
        """Try ``ep`` again if the failure may pass and there is time left, else fail it."""
        transient = kind == "login_failures" or code in NOT_READY
        if transient and self.loop.time() - ep.first_try < self.options.login_retry_s:
            self.retries += 1
            ep.state = IDLE
            delay = LOGIN_RETRY_DELAY_S * random.uniform(0.5, 1.5)
            self.loop.call_later(delay, self.attempt, ep)
            return
        self._failed(ep, kind, why)

    def _closed(self, ep: Endpoint, conn: Transport, exc: BaseException | None) -> None:
        if ep.conn is not conn:
            return  # an earlier attempt, already dealt with
        state = ep.state
        ep.session = ep.conn = None
        if self.closing:
            return
        if state == CONNECTING:
            self._retry(ep, "login_failures", f"{ep.user.name}: connect: {exc or 'closed'}")
        elif state == READY:
            self._dropped(ep, exc)
        # LOGIN: the pending login request already failed with ConnectionError.

    def shutdown(self) -> None:
        """Close every connection; calls ``loop.stop()`` once all are closed (or aborted)."""
        self.closing = True
        if not self._conns:
            self.loop.stop()
            return
        for conn in list(self._conns):
            conn.close()

        def abort_rest() -> None:
            for conn in list(self._conns):
                conn.abort()
            self.loop.stop()

        self.loop.call_later(SHUTDOWN_WAIT_S, abort_rest)
