"""The Redis fabric: presence and relay across msg_servers through one Redis, no route_server.

Keys (every name under ``im:``; *node* is this msg_server's ``redis_node``, default
``ip1:port``)::

    im:nodes               set     the msg_servers that joined
    im:n:<node>:alive      string  the heartbeat: renewed every ttl/3, lives redis_presence_ttl_s
    im:n:<node>:users      set     user ids with a connection on <node>
    im:n:<node>:inbox      stream  what other msg_servers relay to <node> (group "msg")
    im:n:<node>:watch      set     user ids watched on <node> ("*": <node> broadcasts)
    im:u:<user>            hash    "<node>|<client_type>" → 1, one field per connection

**Presence.** A login adds its field, a session's end removes it, in one Lua script
that also says whether the user just came online or went offline *cluster-wide*;
only fields of nodes whose heartbeat key exists count. On each connect to Redis this
server replaces all its fields (``announce``: what was written before a crash goes).
A msg_server that dies stops renewing its heartbeat: its users count as offline
after at most ``redis_presence_ttl_s``, and the next heartbeat of any live msg_server
(within a third of that) reaps the dead node — its fields, user set and stream go, in
one script — and announces its users offline. A msg_server that finds its own
heartbeat gone (it was too slow, or Redis lost it) announces itself again.

**Relay.** One script looks up which live nodes host the recipients and ``XADD``s the
PDU body to each one's inbox (trimmed to ``redis_stream_max``), so a message reaches
exactly the msg_servers that host its recipients, once each, in the order this server
sent them. Each msg_server reads its inbox with ``XREADGROUP`` on a second connection
(blocking reads must not hold up commands), delivers, then ``XACK``s: an entry read
and not acknowledged (the link dropped) is read again from the pending list after the
reconnect, and the copy a client has already had is dropped by msg_id. A new process
starts its inbox afresh (its clients are new; they catch up from the database).
While Redis is unreachable, relays wait in a bounded outbox (order kept) and logins
are refused with result 5, as without route_server.

**Presence subscriptions.** A status notify goes only to the live nodes whose watch
set holds its user (or ``*``), as route_server sends them only to the msg_servers
subscribed with ``WATCH_SET``/``WATCH_ADD``. Each connect replaces this node's set with
the users watched here (``*`` with ``presence = "broadcast"``); a status query adds the
users it newly subscribed; each heartbeat removes the users nobody here watches any
more (until then a notify about one of them comes here and finds no watcher).

Loop thread only.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
import struct
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from google.protobuf.message import DecodeError, Message

from ...config import ConfigError
from ...net import ConnState, Timer
from ...net.tls import client_context
from ...pdu.kinds import GROUP_MSG_TYPES
from ...pdu.proto import im_base_define_pb2 as base
from ...pdu.proto import im_buddy_pb2 as buddy
from ...pdu.proto import im_group_pb2 as group_pb
from ...pdu.proto import im_message_pb2 as msg_pb
from ...pdu.proto import im_server_pb2 as server_pb
from ...pdu.proto import im_switch_service_pb2 as switch_pb
from ...pdu.registry import ids_of
from ...redis import RedisClient, RedisConnectionError, RedisError, RedisReplyError
from ...redis.url import parse_redis_url
from .client import ClientConn
from .dedupe import SeenMessages
from .fabric import Fabric, Inbound

if TYPE_CHECKING:
    from .server import MsgServer

log = logging.getLogger(__name__)

#: One message for the relay script: command id, body, mode, user count, users...
Record = tuple[Any, ...]

GROUP = "msg"  #: the consumer group every inbox is read with
READ_COUNT = 256  #: entries per XREADGROUP
BLOCK_MS = 1000  #: how long one XREADGROUP waits for entries
OUTBOX_MAX = 10_000  #: relays kept while Redis is unreachable; beyond, the oldest go
WATCH_CHUNK = 10_000  #: users per watch-set update (one command stays well under 1 MB)
RELAY_BATCH_MAX = 1000  #: messages per relay script call when the outbox is emptied
RECONNECT_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)

_LIB = """
local function alive(n) return redis.call('EXISTS', 'im:n:' .. n .. ':alive') == 1 end
local function node_of(f) return string.match(f, '^(.*)|') end
local function online(uid)
  for _, f in ipairs(redis.call('HKEYS', 'im:u:' .. uid)) do
    if alive(node_of(f)) then return true end
  end
  return false
end
local function drop_node_user(n, uid)
  local key = 'im:u:' .. uid
  for _, f in ipairs(redis.call('HKEYS', key)) do
    if node_of(f) == n then redis.call('HDEL', key, f) end
  end
end
"""

#: ARGV node, user, client_type, 1|0 → 0 no change, 1 came online, 2 went offline (everywhere)
_STATUS = (
    _LIB
    + """
local n, uid, ct, on = ARGV[1], ARGV[2], ARGV[3], ARGV[4] == '1'
local key, users = 'im:u:' .. uid, 'im:n:' .. ARGV[1] .. ':users'
local before = online(uid)
if on then
  redis.call('HSET', key, n .. '|' .. ct, '1')
  redis.call('SADD', users, uid)
else
  redis.call('HDEL', key, n .. '|' .. ct)
  local left = false
  for _, f in ipairs(redis.call('HKEYS', key)) do
    if node_of(f) == n then left = true end
  end
  if not left then redis.call('SREM', users, uid) end
end
local after = online(uid)
if before == after then return 0 elseif after then return 1 else return 2 end
"""
)

#: ARGV users... → 1 (online) or 2 (offline) each
_ONLINE = (
    _LIB
    + """
local out = {}
for i = 1, #ARGV do out[i] = online(ARGV[i]) and 1 or 2 end
return out
"""
)

#: ARGV node, maxlen, then per message: command id, body, mode, the number of users, the
#: users... → the entries added, all messages together. Mode 'u': the nodes hosting the
#: users; 'a': every other node; 'w': the nodes watching the one user (a status notify).
_RELAY = (
    _LIB
    + """
local n, maxlen = ARGV[1], ARGV[2]
local live_cache, live = {}, nil
local function is_alive(t)
  local a = live_cache[t]
  if a == nil then a = alive(t); live_cache[t] = a end
  return a
end
local function live_nodes()  -- every live node but this one, looked up once per batch
  if live == nil then
    live = {}
    for _, t in ipairs(redis.call('SMEMBERS', 'im:nodes')) do
      if t ~= n and is_alive(t) then table.insert(live, t) end
    end
  end
  return live
end
local function hosts_any(t, first, last)
  -- Slices keep unpack below Lua's stack limit for groups of any size.
  for s = first, last, 512 do
    local hits = redis.call('SMISMEMBER', 'im:n:' .. t .. ':users',
                            unpack(ARGV, s, math.min(s + 511, last)))
    for _, h in ipairs(hits) do if h == 1 then return true end end
  end
  return false
end
local i, added = 3, 0
while i <= #ARGV do
  local cid, body, mode, count = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
  local first, last = i + 4, i + 3 + count
  i = last + 1
  local targets = {}
  if mode == 'a' then
    targets = live_nodes()
  elseif mode == 'w' then
    -- A status notify: the nodes subscribed to its user, or to everyone ('*').
    for _, t in ipairs(live_nodes()) do
      local w = redis.call('SMISMEMBER', 'im:n:' .. t .. ':watch', ARGV[first], '*')
      if w[1] == 1 or w[2] == 1 then table.insert(targets, t) end
    end
  elseif count > #live_nodes() then
    -- Many recipients (a group): one membership query per live node, not a lookup per user.
    for _, t in ipairs(live_nodes()) do
      if hosts_any(t, first, last) then table.insert(targets, t) end
    end
  else
    local seen = {}
    for j = first, last do
      for _, f in ipairs(redis.call('HKEYS', 'im:u:' .. ARGV[j])) do
        local t = node_of(f)
        if t ~= n and seen[t] == nil then
          seen[t] = true
          if is_alive(t) then table.insert(targets, t) end
        end
      end
    end
  end
  for _, t in ipairs(targets) do
    redis.call('XADD', 'im:n:' .. t .. ':inbox', 'MAXLEN', '~', maxlen, '*', 'c', cid, 'p', body)
  end
  added = added + #targets
end
return added
"""
)

#: ARGV node, ttl_ms, (user, client_type)... → {came online, went offline}
_ANNOUNCE = (
    _LIB
    + """
local n, ttl = ARGV[1], ARGV[2]
local users = 'im:n:' .. n .. ':users'
local old = redis.call('SMEMBERS', users)
local touched, before = {}, {}
for _, uid in ipairs(old) do touched[uid] = true end
for i = 3, #ARGV, 2 do touched[ARGV[i]] = true end
for uid in pairs(touched) do before[uid] = online(uid) end
for _, uid in ipairs(old) do drop_node_user(n, uid) end
redis.call('DEL', users)
redis.call('SET', 'im:n:' .. n .. ':alive', '1', 'PX', ttl)
redis.call('SADD', 'im:nodes', n)
for i = 3, #ARGV, 2 do
  redis.call('HSET', 'im:u:' .. ARGV[i], n .. '|' .. ARGV[i + 1], '1')
  redis.call('SADD', users, ARGV[i])
end
local came, went = {}, {}
for uid in pairs(touched) do
  local now = online(uid)
  if now and not before[uid] then table.insert(came, uid) end
  if before[uid] and not now then table.insert(went, uid) end
end
return {came, went}
"""
)

#: no ARGV → the users now offline everywhere because the nodes reaped were their last
_REAP = (
    _LIB
    + """
local touched, gone = {}, {}
for _, t in ipairs(redis.call('SMEMBERS', 'im:nodes')) do
  if not alive(t) then
    local users = 'im:n:' .. t .. ':users'
    for _, uid in ipairs(redis.call('SMEMBERS', users)) do
      drop_node_user(t, uid)
      touched[uid] = true
    end
    redis.call('DEL', users, 'im:n:' .. t .. ':inbox', 'im:n:' .. t .. ':watch')
    redis.call('SREM', 'im:nodes', t)
  end
end
for uid in pairs(touched) do
  if not online(uid) then table.insert(gone, uid) end
end
return gone
"""
)

#: ARGV node, 1 (replace) | 0 (add), users... → the size of the node's watch set
_WATCH = """
local key = 'im:n:' .. ARGV[1] .. ':watch'
if ARGV[2] == '1' then redis.call('DEL', key) end
for s = 3, #ARGV, 512 do
  redis.call('SADD', key, unpack(ARGV, s, math.min(s + 511, #ARGV)))
end
return redis.call('SCARD', key)
"""

_SCRIPTS = {
    name: (text, hashlib.sha1(text.encode()).hexdigest())
    for name, text in (
        ("status", _STATUS),
        ("online", _ONLINE),
        ("relay", _RELAY),
        ("announce", _ANNOUNCE),
        ("reap", _REAP),
        ("watch", _WATCH),
    )
}


def _stat_notify(user_id: int, status: int) -> buddy.IMUserStatNotify:
    return buddy.IMUserStatNotify(
        user_stat=base.UserStat(user_id=user_id, status=base.UserStatType.ValueType(status))
    )


class RedisFabric(Fabric):
    """One msg_server's side of the Redis fabric (this module's docstring)."""

    def __init__(self, server: MsgServer) -> None:
        super().__init__(server)
        c = server.config
        address = parse_redis_url(c.redis)
        context: ssl.SSLContext | None = None
        if address.tls:
            try:
                context = client_context(c.redis_ca_file or None)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"msg.redis_ca_file: cannot load {c.redis_ca_file}: {exc}"
                ) from exc
        self.node = c.redis_node or f"{c.ip1}:{c.port}"
        self.ttl_ms = max(1, int(c.redis_presence_ttl_s * 1000))
        self.inbox = f"im:n:{self.node}:inbox"
        self.alive_key = f"im:n:{self.node}:alive"
        self.watch_key = f"im:n:{self.node}:watch"
        self.commands = RedisClient(
            server.loop,
            address,
            command_timeout_s=c.redis_timeout_s,
            backoff_delays_s=RECONNECT_S,
            on_up=self._commands_up,
            on_down=self._commands_down,
            ssl_context=context,
        )
        #: Blocking reads get a connection of their own: they would hold up every command.
        self.reader = RedisClient(
            server.loop,
            address,
            command_timeout_s=c.redis_timeout_s + BLOCK_MS / 1000,
            backoff_delays_s=RECONNECT_S,
            on_up=self._reader_up,
            ssl_context=context,
        )
        self._announced = False
        self._fresh_inbox = True  # this process's first inbox: start it afresh
        self._backlog = True  # reading our pending entries before new ones
        self._outbox: deque[Record] = deque(maxlen=OUTBOX_MAX)
        self._batch: list[Record] = []  # forwarded in this loop iteration, sent at its end
        self._seen = SeenMessages()
        self._heartbeat: Timer | None = None
        self._told: set[int] = set()  # the users our watch set in Redis holds
        self._handlers: dict[int, tuple[type[Message], Inbound]] = {
            ids_of(cls)[1]: (cls, handler) for cls, handler in self.inbound().items()
        }
        self.relayed_in = 0  #: entries taken from our inbox

    # -- Fabric ----------------------------------------------------------------------------

    @property
    def clustered(self) -> bool:
        return True

    @property
    def ready(self) -> bool:
        return self._announced and self.commands.ready

    @property
    def duplicates(self) -> int:
        """Of the entries taken from our inbox, copies of a message already delivered."""
        return self._seen.duplicates

    @property
    def pending_work(self) -> int:
        # The outbox waits for a reconnect when Redis is down: nothing to wait for then.
        return self.commands.pending + (len(self._outbox) if self.commands.ready else 0)

    def start(self) -> None:
        self.commands.start()
        self.reader.start()
        interval = self.ttl_ms / 3000
        self._heartbeat = self.server.loop.call_every(interval, self._beat)

    def close(self) -> None:
        """Leave: the heartbeat goes at once, so our users count as offline now; the next
        heartbeat of another msg_server reaps the rest and announces them offline."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        if self.commands.ready:
            self.commands.execute("DEL", self.alive_key)
        self.commands.stop()
        self.reader.stop()

    def forward(self, message: Message) -> None:
        users: tuple[int, ...] | None  # None: every other node
        mode = "u"  # to the nodes hosting users (see _RELAY)
        if isinstance(message, msg_pb.IMMsgData):
            if message.msg_type in GROUP_MSG_TYPES:
                data = message.attach_data
                users = struct.unpack(f">{len(data) // 4}I", data[: len(data) // 4 * 4])
            else:
                users = (message.to_session_id, message.from_user_id)
        elif isinstance(message, msg_pb.IMMsgDataReadNotify | server_pb.IMServerKickUser):
            users = (message.user_id,)
        elif isinstance(message, switch_pb.IMP2PCmdMsg):
            users = (message.to_user_id,)
        elif isinstance(message, buddy.IMUserStatNotify):
            users, mode = (message.user_stat.user_id,), "w"
        elif isinstance(message, group_pb.IMGroupChangeMemberNotify):
            users = None
        else:
            raise TypeError(f"the Redis fabric does not relay {type(message).__name__}")
        body = message.SerializePartialToString()
        self.count_out(message)
        record: Record = (
            ids_of(message)[1],
            body,
            "a" if users is None else mode,
            len(users or ()),
            *(users or ()),
        )
        if self._outbox or not self.ready:
            # Behind what waits already (this iteration's batch too): order is kept.
            self._outbox.extend(self._batch)
            self._batch.clear()
            self._outbox.append(record)
            return
        if not self._batch:
            # Everything forwarded in this loop iteration goes in one script call: the
            # call's own cost (Lua, the replication of its effects) is paid once.
            self.server.loop.call_soon(self._send_batch)
        self._batch.append(record)

    def status_changed(self, conn: ClientConn, status: int) -> None:
        if not self.ready:
            return  # the announce after the reconnect writes the whole set
        online = status != base.USER_STATUS_OFFLINE
        user_id = conn.user_id

        def done(reply: Any, error: RedisError | None) -> None:
            if error is not None:
                log.warning("presence of user %d not written: %s", user_id, error)
            elif reply == 1:
                self._announce_status(user_id, base.USER_STATUS_ONLINE)
            elif reply == 2:
                self._announce_status(user_id, base.USER_STATUS_OFFLINE)

        self._script(
            "status", self.node, user_id, conn.client_type, 1 if online else 0, callback=done
        )

    def users_status(self, conn: ClientConn, msg: buddy.IMUsersStatReq, seq: int) -> bool:
        self._watch_new(msg.user_id_list)
        if not self.ready:
            return False
        user_ids = list(msg.user_id_list)
        if not user_ids:
            return False

        def answered(reply: Any, error: RedisError | None) -> None:
            if error is not None or not isinstance(reply, list):
                log.warning("presence query failed: %s", error)
                return
            watchers = self.server.presence.watchers
            rsp = buddy.IMUsersStatRsp(user_id=conn.user_id)
            for uid, status in zip(user_ids, reply, strict=True):
                rsp.user_stat_list.add(user_id=uid, status=base.UserStatType.ValueType(status))
                entry = watchers.get(uid)
                if entry is not None and entry.status == 0:
                    entry.status = status
            if conn.conn.state is ConnState.CONNECTED:
                conn.send(rsp, seq)

        self._script("online", *user_ids, callback=answered)
        return True

    # -- commands --------------------------------------------------------------------------

    def _script(self, name: str, *args: Any, callback: Any = None) -> None:
        self.commands.execute("EVALSHA", _SCRIPTS[name][1], 0, *args, callback=callback)

    def _send_batch(self) -> None:
        batch, self._batch = self._batch, []
        if batch:  # empty when the link went down meanwhile: forward moved it to the outbox
            self._relay(batch)

    def _relay(self, records: list[Record]) -> None:
        """One ``relay`` script call for ``records``, in order."""

        def done(reply: Any, error: RedisError | None) -> None:
            if isinstance(error, RedisConnectionError):
                # Perhaps run, perhaps not: again after the reconnect (a second copy of
                # a message is dropped by msg_id where it arrives).
                self._outbox.extend(records)
            elif error is not None:
                log.warning("relay of %d messages failed: %s", len(records), error)

        args = [self.node, self.server.config.redis_stream_max]
        for record in records:
            args += record
        self._script("relay", *args, callback=done)

    def _announce_status(self, user_id: int, status: int) -> None:
        """A cluster-wide transition: our subscribers now, every other node through Redis."""
        notify = _stat_notify(user_id, status)
        self.server.presence.relayed_stat_notify(notify)
        self.forward(notify)

    # -- presence subscriptions -------------------------------------------------------------

    def _watch_new(self, user_ids: Iterable[int]) -> None:
        """Add to our watch set in Redis the users watched here since we last told it.

        Presence has already subscribed the asking connection (up to its limit), so
        :attr:`Presence.watchers` says who is watched here now.
        """
        if not self.server.presence.subscribed or not self.commands.ready:
            return  # broadcast: '*' says it all; not connected: the announce sends the set
        watchers, told = self.server.presence.watchers, self._told
        added = [u for u in dict.fromkeys(user_ids) if u in watchers and u not in told]
        if added:
            told.update(added)
            self._script("watch", self.node, 0, *added, callback=self._watch_written)

    def _watch_all(self) -> None:
        """Make our watch set in Redis the users watched here ('*' with broadcast presence)."""
        presence = self.server.presence
        self._told = set(presence.watchers) if presence.subscribed else set()
        users: list[Any] = [*self._told] if presence.subscribed else ["*"]
        for start in range(0, max(len(users), 1), WATCH_CHUNK):
            chunk = users[start : start + WATCH_CHUNK]
            self._script(
                "watch", self.node, 1 if start == 0 else 0, *chunk, callback=self._watch_written
            )

    def _unwatch_gone(self) -> None:
        """Take out of our watch set the users nobody here watches any more (each heartbeat:
        until then a few notifies too many come here, and find no watcher)."""
        if not self.server.presence.subscribed:
            return
        gone = self._told - self.server.presence.watchers.keys()
        if not gone:
            return
        self._told -= gone
        users = list(gone)
        for start in range(0, len(users), WATCH_CHUNK):
            self.commands.execute("SREM", self.watch_key, *users[start : start + WATCH_CHUNK])

    @staticmethod
    def _watch_written(reply: Any, error: RedisError | None) -> None:
        if error is not None:
            # The next connect's announce writes the whole set again.
            log.warning("redis fabric: presence subscriptions not written: %s", error)

    def _commands_up(self) -> None:
        for text, _ in _SCRIPTS.values():
            self.commands.execute("SCRIPT", "LOAD", text)
        self._announce()

    def _commands_down(self, exc: BaseException | None) -> None:
        self._announced = False

    def _announce(self) -> None:
        """Make this server's connections the whole of its presence in Redis."""
        pairs: list[int] = []
        for user_id, conns in self.server.users.items():
            for c in conns:
                pairs += (user_id, c.client_type)

        def done(reply: Any, error: RedisError | None) -> None:
            if error is not None:
                log.warning("redis fabric: announce failed: %s", error)
                return
            came, went = reply
            self._announced = True
            log.info("redis fabric: node %s joined with %d connections", self.node, len(pairs) // 2)
            for uid in went:
                self._announce_status(int(uid), base.USER_STATUS_OFFLINE)
            for uid in came:
                self._announce_status(int(uid), base.USER_STATUS_ONLINE)
            outbox, self._outbox = self._outbox, deque(maxlen=OUTBOX_MAX)
            records = [*outbox, *self._batch]
            self._batch = []
            for start in range(0, len(records), RELAY_BATCH_MAX):
                self._relay(records[start : start + RELAY_BATCH_MAX])

        self._watch_all()  # before the announce: the notifies it causes find the set
        self._script("announce", self.node, self.ttl_ms, *pairs, callback=done)

    def _beat(self) -> None:
        if not self._announced or not self.commands.ready:
            return
        self._unwatch_gone()

        def renewed(reply: Any, error: RedisError | None) -> None:
            if error is None and reply is None:
                # Our heartbeat had expired (we were slow, or Redis lost it): we may
                # have been reaped. Write our presence again.
                log.warning("redis fabric: node %s had expired; announcing again", self.node)
                self._announce()

        self.commands.execute("SET", self.alive_key, 1, "PX", self.ttl_ms, "GET", callback=renewed)

        def reaped(reply: Any, error: RedisError | None) -> None:
            if error is not None or not reply:
                return
            log.info("redis fabric: %d users of stopped msg_servers now offline", len(reply))
            for uid in reply:
                self._announce_status(int(uid), base.USER_STATUS_OFFLINE)

        self._script("reap", callback=reaped)

    # -- the inbox -------------------------------------------------------------------------

    def _reader_up(self) -> None:
        reader = self.reader
        if self._fresh_inbox:
            # A new process: what waits in the inbox was for the clients of its last life.
            reader.execute("XGROUP", "DESTROY", self.inbox, GROUP)
            reader.execute("XGROUP", "CREATE", self.inbox, GROUP, "$", "MKSTREAM")
            self._fresh_inbox = False
        else:
            self._create_group()
        self._backlog = True
        self._read()

    def _create_group(self) -> None:
        def created(reply: Any, error: RedisError | None) -> None:
            if error is not None and "BUSYGROUP" not in str(error):
                log.warning("redis fabric: inbox group not created: %s", error)

        # From the start: entries added since the stream was lost are for our clients.
        self.reader.execute(
            "XGROUP", "CREATE", self.inbox, GROUP, "0", "MKSTREAM", callback=created
        )

    def _read(self) -> None:
        if not self.reader.ready:
            return  # _reader_up starts reading again
        args: list[Any] = ["XREADGROUP", "GROUP", GROUP, self.node, "COUNT", READ_COUNT]
        if not self._backlog:
            args += ["BLOCK", BLOCK_MS]
        args += ["STREAMS", self.inbox, "0" if self._backlog else ">"]
        self.reader.execute(*args, callback=self._got)

    def _got(self, reply: Any, error: RedisError | None) -> None:
        if isinstance(error, RedisReplyError) and "NOGROUP" in str(error):
            log.warning("redis fabric: inbox of %s was lost; recreating it", self.node)
            self._create_group()
            self.server.loop.call_soon(self._read)
            return
        if error is not None:
            if not isinstance(error, RedisConnectionError):
                log.warning("redis fabric: reading the inbox failed: %s", error)
                self.server.loop.call_later(0.5, self._read)
            return  # a lost link reads again from _reader_up
        entries = reply[0][1] if reply else []
        if self._backlog and not entries:
            self._backlog = False
        ids = []
        for entry_id, fields in entries:
            ids.append(entry_id)
            if fields:  # None: trimmed away after it was read
                self._dispatch(entry_id, fields)
        if ids:
            self.reader.execute("XACK", self.inbox, GROUP, *ids)
        self._read()

    def _dispatch(self, entry_id: bytes, fields: list[bytes]) -> None:
        values = dict(zip(fields[::2], fields[1::2], strict=False))
        try:
            command_id = int(values[b"c"])
            body = values[b"p"]
            cls, handler = self._handlers[command_id]
            message = cls()
            message.MergeFromString(body)
        except (KeyError, ValueError, DecodeError) as exc:
            log.warning("redis fabric: inbox entry %r dropped: %r", entry_id, exc)
            return
        self.relayed_in += 1
        if isinstance(message, msg_pb.IMMsgData) and not self._seen.first_time(message):
            return
        try:
            handler(message)
        except Exception:
            log.exception("redis fabric: handling inbox entry %r failed", entry_id)
