"""imreactor.redis — Redis on the reactor: a pipelining client and a private server process.

Nothing here knows about IM. :class:`RedisClient` speaks RESP through hiredis's
sans-IO parser on an :class:`~imreactor.net.EventLoop` connection;
:class:`RedisProcess` runs a private ``redis-server`` (for ``imreactor up`` and tests).
"""

from .client import (
    RedisClient,
    RedisConnectionError,
    RedisError,
    RedisProtocolError,
    RedisReplyError,
    RedisTimeout,
    ReplyCallback,
)
from .process import RedisProcess, RedisUnavailable
from .url import RedisAddress, parse_redis_url

__all__ = [
    "RedisAddress",
    "RedisClient",
    "RedisConnectionError",
    "RedisError",
    "RedisProcess",
    "RedisProtocolError",
    "RedisReplyError",
    "RedisTimeout",
    "RedisUnavailable",
    "ReplyCallback",
    "parse_redis_url",
]
