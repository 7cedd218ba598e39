"""msg_server sessions: login (capacity, throttling, validation), kick and logout.

A login is refused at once when the server is full (result 2, "server full"), when a
link it needs is down (3-5, "server not ready"), or when the throttle says the name or
address must wait (6, held back ``throttle_answer_delay_s``). Otherwise db_proxy
validates it; on success, if the user holds ``sessions_<class>`` connections of
the same device class (desktop, mobile, web, script) already, the oldest is kicked
here (and, where that limit is 1, through route_server on other msg_servers), and
login_server is told the new count. Loop thread only.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any

from ...logs import RateLimitedLog, ids
from ...net import ConnState
from ...net.limits import open_files_limit
from ...pdu.imconn import Dispatcher
from ...pdu.kinds import USER_ACTION_ADD, USER_ACTION_DEL, device_class
from ...pdu.proto import im_base_define_pb2 as base
from ...pdu.proto import im_login_pb2 as login_pb
from ...pdu.proto import im_server_pb2 as server_pb
from .client import ClientConn, UserConns, host_of
from .config import MsgConfig
from .throttle import Limits, LoginThrottle

if TYPE_CHECKING:
    from .server import MsgServer

log = logging.getLogger(__name__)
_throttled_log = RateLimitedLog(log)


#: Descriptors msg_server keeps apart from clients': links, listener, poller, logs.
FD_RESERVE = 128


def connection_capacity(max_conn_cnt: int) -> int:
    """Client connections this process can hold: ``max_conn_cnt``, or fewer if the
    open-file limit leaves fewer (one descriptor each, :data:`FD_RESERVE` kept)."""
    soft = open_files_limit()
    if soft is None:
        return max_conn_cnt
    return max(1, min(max_conn_cnt, soft - FD_RESERVE))


def _limits(config: MsgConfig, kind: str) -> Limits:
    """The throttle's limits for ``kind`` (``account`` or ``address``) from ``config``."""
    return Limits(
        free=getattr(config, f"throttle_{kind}_free"),
        lockout=getattr(config, f"throttle_{kind}_lockout"),
        delay_s=config.throttle_delay_s,
        max_delay_s=config.throttle_max_delay_s,
        lockout_s=config.throttle_lockout_s,
    )


class Sessions:
    """Who is logged in where: the login, kick and logout flows of one msg_server."""

    def __init__(self, server: MsgServer) -> None:
        self.server = server
        config = server.config
        self.throttle = LoginThrottle(
            _limits(config, "account"),
            _limits(config, "address"),
            config.throttle_max_entries,
            server.loop.time,
        )

    def register(self, clients: Dispatcher[ClientConn]) -> None:
        """Serve the session requests of client connections."""
        clients.register(login_pb.IMLoginReq, self._on_login)
        clients.register(login_pb.IMLogoutReq, self._on_logout)

    def _on_login(self, conn: ClientConn, req: login_pb.IMLoginReq, seq: int) -> None:
        if conn.logged_in or conn.login_pending:
            log.warning("%r: second IMLoginReq ignored", conn.conn)
            return
        name = req.user_name
        address = host_of(conn)
        wait = self.throttle.retry_after(name, address)
        if wait > 0.0:
            # No db request, so no hash: a guesser's attempts cost a dict lookup. The answer
            # is held back (a timer, no CPU) so that a guesser waits instead of spinning on
            # answers it gets at once: a flood's rate, and so its cost to everyone else's
            # logins, is then bounded by its connections, not by our speed.
            why = f"too many failed logins; try again in {math.ceil(wait)} s"
            # A guesser's flood is one line per window, not one per attempt.
            _throttled_log.log(
                self.server.loop,
                "throttled logins",
                "login of %r from %s throttled: %s",
                name,
                address,
                why,
                extra=ids(conn=conn.handle),
            )
            # Answered well before the login deadline would close the connection unanswered.
            config = self.server.config
            delay = min(wait, config.throttle_answer_delay_s, config.login_timeout_s / 2)
            self.server.stats.logins.inc("throttled")
            if delay > 0.0:
                conn.login_pending = True  # a second IMLoginReq meanwhile is ignored
                self.server.loop.call_later(delay, self._throttled_answer, conn, seq, why)
            else:
                self._login_refused(conn, seq, base.REFUSE_REASON_DB_VALIDATE_FAILED, why, None)
            return
        refuse = 0
        db = self.server.db.pick()
        if len(self.server.clients) > self.server.capacity:
            self._login_refused(
                conn, seq, base.REFUSE_REASON_MSG_SERVER_FULL, "server full", "full"
            )
            return
        if db is None:
            refuse = base.REFUSE_REASON_NO_DB_SERVER
        elif self.server.login.configured and not self.server.login.live:
            refuse = base.REFUSE_REASON_NO_LOGIN_SERVER
        elif not self.server.relay.ready:
            refuse = base.REFUSE_REASON_NO_ROUTE_SERVER
        if refuse or db is None:
            self._login_refused(conn, seq, refuse, "server not ready", "unavailable")
            return
        conn.login_pending = True
        validate = server_pb.IMValidateReq(
            user_name=req.user_name, password=req.password, attach_data=conn.attach()
        )
        client_type = req.client_type
        online_status = req.online_status
        stats = self.server.stats
        asked = stats.loop.time()

        def validated(rsp: server_pb.IMValidateRsp | None, exc: BaseException | None) -> None:
            conn.login_pending = False
            stats.login_latency.observe(stats.loop.time() - asked)
            if conn.conn.state is not ConnState.CONNECTED:
                return
            if rsp is None:
                log.warning("validate for %r failed: %s", req.user_name, exc)
                self._login_refused(
                    conn, seq, base.REFUSE_REASON_NO_DB_SERVER, "database busy", "unavailable"
                )
                return
            if rsp.result_code != 0 or not rsp.HasField("user_info"):
                # db_proxy says 3 when its database failed: not the user's fault.
                code = rsp.result_code
                if code != base.REFUSE_REASON_NO_DB_SERVER:
                    code = base.REFUSE_REASON_DB_VALIDATE_FAILED
                    for kind in self.throttle.failure(name, address):
                        log.warning(
                            "%s %r locked out for %.0f s after too many failed logins",
                            kind,
                            name if kind == "account" else address,
                            self.server.config.throttle_lockout_s,
                        )
                outcome = (
                    "failed" if code == base.REFUSE_REASON_DB_VALIDATE_FAILED else "unavailable"
                )
                self._login_refused(conn, seq, code, rsp.result_string, outcome)
                return
            self.throttle.success(name)
            stats.logins.inc("ok")
            self._logged_in(conn, seq, rsp.user_info, client_type, online_status)

        db.request(
            validate,
            validated,
            timeout_s=self.server.config.db_timeout_s,
            response=server_pb.IMValidateRsp,
        )

    def _throttled_answer(self, conn: ClientConn, seq: int, why: str) -> None:
        conn.login_pending = False
        if conn.conn.state is ConnState.CONNECTED:
            self._login_refused(conn, seq, base.REFUSE_REASON_DB_VALIDATE_FAILED, why, None)

    def _login_refused(
        self, conn: ClientConn, seq: int, code: int, why: str, outcome: str | None
    ) -> None:
        """Answer ``code`` and close; count the login as ``outcome`` (None: counted already)."""
        if outcome is not None:
            self.server.stats.logins.inc(outcome)
        log.info("%r: login refused (%d %s)", conn.conn, code, why, extra=ids(conn=conn.handle))
        conn.send(
            login_pb.IMLoginRes(
                server_time=int(time.time()),
                result_code=base.ResultType.ValueType(code),
                result_string=why,
            ),
            seq,
        )
        conn.conn.close()

    def _logged_in(
        self, conn: ClientConn, seq: int, user_info: Any, client_type: int, status: int
    ) -> None:
        user_id = user_info.user_id
        conns = self.server.users.get(user_id)
        was_online = conns is not None and any(True for _ in conns)
        if conns is None:
            conns = self.server.users[user_id] = UserConns()
        device = device_class(client_type)
        limit = self.sessions_of(device)
        same = conns.of_class(device)
        if len(same) >= limit:
            # The oldest sessions of this class make room (TeamTalk's rule when the
            # limit is 1: the newer desktop, or mobile, replaces the older one).
            for older in same[: len(same) - limit + 1]:
                self.kick(older, base.KICK_REASON_DUPLICATE_USER)
            # The kick may have dropped the entry.
            conns = self.server.users.setdefault(user_id, conns)
        conns.add(conn)
        if device == "mobile":
            conn.policy = self.server.mobile_policy
        conn.user_id = user_id
        conn.client_type = client_type
        conn.cancel_login_deadline()
        self.server.login.broadcast(
            server_pb.IMUserCntUpdate(user_action=USER_ACTION_ADD, user_id=user_id)
        )
        conn.send(
            login_pb.IMLoginRes(
                server_time=int(time.time()),
                result_code=base.REFUSE_REASON_NONE,
                online_status=base.UserStatType.ValueType(status or base.USER_STATUS_ONLINE),
                user_info=user_info,
            ),
            seq,
        )
        log.info(
            "user %d logged in (%r, client type 0x%x)",
            user_id,
            conn.conn,
            client_type,
            extra=ids(conn=conn.handle, user=user_id),
        )
        self.server.relay.status_changed(conn, base.USER_STATUS_ONLINE)
        if limit == 1:
            # One session of this class in the cluster: another msg_server's is kicked
            # there. (Larger limits hold per msg_server.)
            self.server.relay.forward(
                server_pb.IMServerKickUser(
                    user_id=user_id,
                    client_type=base.ClientType.ValueType(client_type),
                    reason=base.KICK_REASON_DUPLICATE_USER,
                )
            )
        if not was_online and not self.server.relay.clustered:
            # In a cluster, presence is cluster-wide: the fabric announces it.
            self.server.presence.notify_status(user_id, base.USER_STATUS_ONLINE)

    def sessions_of(self, device: str) -> int:
        """How many sessions of device class ``device`` one user may hold here."""
        limit: int = getattr(self.server.config, f"sessions_{device}")
        return limit

    def kick(self, older: ClientConn, reason: int) -> None:
        log.info(
            "user %d: kicking %r (reason %d)",
            older.user_id,
            older.conn,
            reason,
            extra=ids(conn=older.handle, user=older.user_id),
        )
        older.send(
            login_pb.IMKickUser(
                user_id=older.user_id, kick_reason=base.KickReasonType.ValueType(reason)
            )
        )
        self._end(older)

    def close_user(self, user_id: int) -> None:
        """Close every session of ``user_id`` here: an administrator disabled or deleted
        the account. No IMKickUser: TeamTalk has no reason for it, and the ones it has
        would tell the client to log in again; its next login is refused instead."""
        conns = self.server.users.get(user_id)
        for conn in list(conns) if conns is not None else []:
            log.info(
                "user %d: account closed; closing %r",
                user_id,
                conn.conn,
                extra=ids(conn=conn.handle, user=user_id),
            )
            self._end(conn)
        if conns is not None and not self.server.relay.clustered:
            self.server.presence.notify_status(user_id, base.USER_STATUS_OFFLINE)

    def _end(self, older: ClientConn) -> None:
        """Close a logged-in connection for the server's reasons (kick, closed account)."""
        # Detach before closing: the close notification must not log the user out.
        self._detach(older)
        self.server.presence.unwatch(older)  # a kicked connection is told nothing more
        older.kicked = True
        older.user_id = 0
        older.conn.close()

    def _detach(self, conn: ClientConn) -> bool:
        """Remove ``conn`` from its user's slots; True if the user has no connection left."""
        conns = self.server.users.get(conn.user_id)
        if conns is None or not conns.remove(conn):
            return False
        self.server.login.broadcast(
            server_pb.IMUserCntUpdate(user_action=USER_ACTION_DEL, user_id=conn.user_id)
        )
        self.server.relay.status_changed(conn, base.USER_STATUS_OFFLINE)
        if not conns:
            del self.server.users[conn.user_id]
            return True
        return False

    def user_gone(self, conn: ClientConn) -> None:
        """A logged-in connection closed."""
        user_id = conn.user_id
        if self._detach(conn):
            log.info("user %d offline", user_id, extra=ids(conn=conn.handle, user=user_id))
            if not self.server.relay.clustered:
                self.server.presence.notify_status(user_id, base.USER_STATUS_OFFLINE)

    def _on_logout(self, conn: ClientConn, req: login_pb.IMLogoutReq, seq: int) -> None:
        conn.send(login_pb.IMLogoutRsp(result_code=0), seq)
        conn.conn.close()
