"""The server role: listening sockets that accept connections.

A :class:`Listener` is one listening socket (state LISTENING); a
:class:`Server` is the group of listeners made for one ``listen()`` call
(a host name or ``None`` can mean several addresses: IPv4 and IPv6).
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .connection import DEFAULT_FLOW, Connection, FlowControl, check_port
from .poller import READABLE
from .transport import ConnState, Protocol

if TYPE_CHECKING:
    from .loop import EventLoop
    from .timers import Timer

log = logging.getLogger(__name__)

#: After EMFILE/ENFILE the listener stops watching its socket for this long:
#: under level-triggered polling a full fd table would otherwise spin the loop.
ACCEPT_RETRY_DELAY_S = 0.5
#: Connections accepted per readiness event at most, so that a connection storm
#: cannot starve established connections of their turn.
MAX_ACCEPTS_PER_EVENT = 256

_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# The connection died between SYN and accept(): not the listener's problem.
_TRANSIENT_ERRNOS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ENETDOWN})

ProtocolFactory = Callable[[], Protocol]


class Listener:
    """One listening socket dispatching accepted connections to ``protocol_factory()``.

    Every accepted connection gets TCP_NODELAY (unless ``nodelay`` is False)
    and the listener's :class:`FlowControl`. Loop thread only.
    """

    def __init__(
        self,
        loop: EventLoop,
        sock: socket.socket,
        protocol_factory: ProtocolFactory,
        flow: FlowControl = DEFAULT_FLOW,
        nodelay: bool = True,
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.protocol_factory = protocol_factory
        self.flow = flow
        self.nodelay = nodelay
        self.state = ConnState.IDLE
        self._fd = sock.fileno()
        self._retry: Timer | None = None
        self.accepted = 0  #: connections accepted so far

    @property
    def address(self) -> Any:
        """The bound address (``getsockname()``)."""
        return self.sock.getsockname()

    def start(self) -> None:
        self.state = ConnState.LISTENING
        self.loop.add_handler(self._fd, READABLE, self)

    def handle_read(self) -> None:
        accept = self.sock.accept
        loop = self.loop
        flow = self.flow
        factory = self.protocol_factory
        for _ in range(MAX_ACCEPTS_PER_EVENT):
            try:
                sock, _addr = accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _TRANSIENT_ERRNOS:
                    continue
                if exc.errno in _RESOURCE_ERRNOS:
                    log.error(
                        "accept on %s failed: %s; not accepting for %.1f s",
                        self.address,
                        exc.strerror,
                        ACCEPT_RETRY_DELAY_S,
                    )
                    self._pause_accepting()
                    return
                raise
            sock.setblocking(False)
            if self.nodelay:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.accepted += 1
            try:
                protocol = factory()
            except Exception:
                log.exception("protocol factory failed; dropping the new connection")
                sock.close()
                continue
            Connection(loop, sock, protocol, flow)._start_accepted()
            if self.state is not ConnState.LISTENING:
                return  # the new connection's protocol closed this listener

    def _pause_accepting(self) -> None:
        self.loop.modify_handler(self._fd, 0)
        self._retry = self.loop.call_later(ACCEPT_RETRY_DELAY_S, self._resume_accepting)

    def _resume_accepting(self) -> None:
        self._retry = None
        if self.state is ConnState.LISTENING:
            self.loop.modify_handler(self._fd, READABLE)

    def handle_write(self) -> None:
        pass

    def handle_error(self, exc: BaseException) -> None:
        # An unexpected accept error: log it and keep listening; the listener is
        # the server's front door and one bad accept must not close it.
        log.error("%r: unexpected error", self, exc_info=exc)

    def close(self) -> None:
        """Stop listening and close the socket. Accepted connections are unaffected."""
        if self.state is ConnState.CLOSED:
            return
        self.state = ConnState.CLOSED
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        self.loop.remove_handler(self._fd)
        self.sock.close()

    def __repr__(self) -> str:
        return f"<Listener fd={self._fd} {self.state.value}>"


class Server:
    """The listeners of one :func:`listen` call."""

    def __init__(self, listeners: list[Listener]) -> None:
        self.listeners = listeners

    @property
    def addresses(self) -> list[Any]:
        return [
            listener.address
            for listener in self.listeners
            if listener.state is not ConnState.CLOSED
        ]

    @property
    def port(self) -> int:
        """The port of the first listener (handy with port 0)."""
        return int(self.listeners[0].address[1])

    def close(self) -> None:
        for listener in self.listeners:
            listener.close()


def bind_sockets(
    host: str | Iterable[str] | None,
    port: int,
    *,
    backlog: int = 1024,
    reuse_port: bool = False,
) -> list[socket.socket]:
    """Create, bind and listen non-blocking sockets for every address of ``host``.

    ``host`` may be an address literal, a host name, several of those, or
    ``None``/``""`` for every interface (IPv4 and, where available, IPv6).
    SO_REUSEADDR is always set (a restarted server must not wait for TIME_WAIT);
    SO_REUSEPORT only on request. IPv6 sockets are IPV6_V6ONLY so that both
    families can bind the same port.
    """
    hosts: list[str | None]
    if host is None or host == "":
        hosts = [None]
    elif isinstance(host, str):
        hosts = [host]
    else:
        hosts = list(host)
    check_port(port)
    sockets: list[socket.socket] = []
    seen: set[Any] = set()
    try:
        for h in hosts:
            infos = socket.getaddrinfo(h, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            for family, type_, proto, _, address in infos:
                if (family, address) in seen:
                    continue
                seen.add((family, address))
                if port == 0 and sockets:
                    # One port for every address, as a client resolving the name expects.
                    address = (address[0], sockets[0].getsockname()[1], *address[2:])
                sock = socket.socket(family, type_, proto)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                sock.listen(backlog)
                sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def listen(
    loop: EventLoop,
    host: str | Iterable[str] | None,
    port: int,
    protocol_factory: ProtocolFactory,
    *,
    backlog: int = 1024,
    reuse_port: bool = False,
    flow: FlowControl = DEFAULT_FLOW,
    nodelay: bool = True,
) -> Server:
    """Listen on every address of ``host`` (see :func:`bind_sockets`) and start accepting."""
    listeners = [
        Listener(loop, sock, protocol_factory, flow, nodelay)
        for sock in bind_sockets(host, port, backlog=backlog, reuse_port=reuse_port)
    ]
    for listener in listeners:
        listener.start()
    return Server(listeners)
