"""imreactor.net — the reactor: pollers, event loop, timers, connections, workers.

Nothing here knows about IM. The object API::

    loop = EventLoop()                       # best poller, or $IMREACTOR_POLLER
    server = loop.listen("127.0.0.1", 8000, MyProtocol)
    conn = loop.connect("127.0.0.1", 9000, MyClientProtocol())
    loop.call_every(1.0, tick)
    loop.run()

and the original's procedural API in :mod:`imreactor.net.netlib`.
"""

from .acceptor import Listener, Server, bind_sockets, listen
from .connection import Connection, FlowControl, PeerTooSlow, connect, parse_address
from .connector import Backoff, Connector
from .loop import EventLoop, LoopCallback
from .poller import available as available_pollers
from .timers import Timer
from .transport import CloseCallback, ConnState, Protocol, Transport
from .workers import DeadlineExpired, PoolFull, WorkerPool

__all__ = [
    "Backoff",
    "CloseCallback",
    "ConnState",
    "Connection",
    "Connector",
    "DeadlineExpired",
    "EventLoop",
    "FlowControl",
    "Listener",
    "LoopCallback",
    "PeerTooSlow",
    "PoolFull",
    "Protocol",
    "Server",
    "Timer",
    "Transport",
    "WorkerPool",
    "available_pollers",
    "bind_sockets",
    "connect",
    "listen",
    "parse_address",
]
