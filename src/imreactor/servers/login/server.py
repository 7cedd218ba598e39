"""login_server: a registry of msg_servers and their load, and the HTTP answer clients ask for.

msg_servers connect to ``msg_server_port`` and send ``IMMsgServInfo`` (their
addresses and counts), then ``IMUserCntUpdate`` on every login and logout.
Clients ask ``GET /msg_server`` (or ``IMMsgServReq`` on ``client_port``) and
get the msg_server with the fewest users among those not full. A msg_server
whose link closes or goes silent is forgotten at once.

A peer on the msg_server port (authenticated as a server of the cluster when
links are: ``imreactor user disable`` and ``user del`` connect with the data
dir's link certificate) may send ``IMServerKickUser``: login_server passes it to
every registered msg_server, which closes all of that user's sessions, and
answers the sender with the same message (same seq) once it has been passed on.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from ...http import JSON, HttpConnections, Request, Response, Router
from ...logs import ids
from ...net import EventLoop, Server
from ...pdu.imconn import Dispatcher, ImConnection, Keepalive, LinkPolicy
from ...pdu.kinds import USER_ACTION_ADD, USER_ACTION_DEL
from ...pdu.proto import im_base_define_pb2 as base
from ...pdu.proto import im_login_pb2 as login_pb
from ...pdu.proto import im_server_pb2 as server_pb
from ...static import StaticFiles
from ..linkauth import link_server_context, public_server_context
from ..metrics import Metrics
from ..runner import Done, when_idle
from .config import LoginConfig
from .dashboard import WEB_ROOT, Dashboard

log = logging.getLogger(__name__)

#: The browser files shipped in the package (imreactor/web).


@dataclass
class MsgServerEntry:
    """What login_server knows of one registered msg_server."""

    ip1: str
    ip2: str
    port: int
    max_conn_cnt: int
    cur_conn_cnt: int
    host_name: str
    tls_port: int = 0  # 0: the msg_server has no TLS listener
    ws_port: int = 0  # 0: no WebSocket listener
    wss_port: int = 0  # 0: no WebSocket-over-TLS listener


class MsgServerRegistry:
    """The registered msg_servers, keyed by their link. Loop thread only."""

    def __init__(self) -> None:
        self._servers: dict[ImConnection, MsgServerEntry] = {}

    def __len__(self) -> int:
        return len(self._servers)

    def register(self, link: ImConnection, info: server_pb.IMMsgServInfo) -> None:
        self._servers[link] = MsgServerEntry(
            info.ip1,
            info.ip2,
            info.port,
            info.max_conn_cnt,
            info.cur_conn_cnt,
            info.host_name,
            info.tls_port,
            info.ws_port,
            info.wss_port,
        )
        log.info(
            "msg_server %s (%s:%d) registered with %d/%d users",
            info.host_name,
            info.ip1,
            info.port,
            info.cur_conn_cnt,
            info.max_conn_cnt,
        )

    def update_count(self, link: ImConnection, action: int) -> None:
        entry = self._servers.get(link)
        if entry is None:
            return  # a count before IMMsgServInfo: the recount in IMMsgServInfo will cover it
        if action == USER_ACTION_ADD:
            entry.cur_conn_cnt += 1
        elif action == USER_ACTION_DEL and entry.cur_conn_cnt > 0:
            entry.cur_conn_cnt -= 1

    def get(self, link: ImConnection) -> MsgServerEntry | None:
        return self._servers.get(link)

    def items(self) -> list[tuple[ImConnection, MsgServerEntry]]:
        return list(self._servers.items())

    def forget(self, link: ImConnection) -> None:
        entry = self._servers.pop(link, None)
        if entry is not None:
            log.info("msg_server %s (%s:%d) gone", entry.host_name, entry.ip1, entry.port)

    def pick(self) -> tuple[int, MsgServerEntry | None]:
        """``(0, least loaded)``, or ``(1, None)`` if none registered, ``(2, None)`` if all full."""
        if not self._servers:
            return base.REFUSE_REASON_NO_MSG_SERVER, None
        open_ = [e for e in self._servers.values() if e.cur_conn_cnt < e.max_conn_cnt]
        if not open_:
            return base.REFUSE_REASON_MSG_SERVER_FULL, None
        return 0, min(open_, key=lambda e: e.cur_conn_cnt)

    def links(self) -> list[ImConnection]:
        """The links of the registered msg_servers."""
        return list(self._servers)

    def total_users(self) -> int:
        return sum(e.cur_conn_cnt for e in self._servers.values())


class LoginServer:
    """All of login_server's listeners and state on one loop."""

    def __init__(self, loop: EventLoop, config: LoginConfig) -> None:
        self.loop = loop
        self.config = config
        self.registry = MsgServerRegistry()
        self.keepalive = Keepalive(loop)
        self._servers: list[Server] = []
        self._link_policy = LinkPolicy(heartbeat_s=config.heartbeat_s, timeout_s=config.timeout_s)

        self.msg_dispatch = Dispatcher[_MsgServerLink]()
        self.msg_dispatch.register(server_pb.IMMsgServInfo, self._on_msg_serv_info)
        self.msg_dispatch.register(server_pb.IMUserCntUpdate, self._on_user_cnt_update)
        self.msg_dispatch.register(server_pb.IMServerKickUser, self._on_kick_user)
        self.dashboard = Dashboard(self.registry, loop.time)
        self.msg_dispatch.register(server_pb.IMMsgServStats, self.dashboard.on_stats)
        self.client_dispatch = Dispatcher[ImConnection]()
        self.client_dispatch.register(login_pb.IMMsgServReq, self._on_msg_serv_req)
        self.metrics = Metrics(loop, "login_server", self._ready)
        self.metrics.gauge(
            "imreactor_login_msg_servers", "msg_servers registered", lambda: len(self.registry)
        )
        self.metrics.gauge(
            "imreactor_login_users",
            "Users online on the registered msg_servers",
            self.registry.total_users,
        )
        self._answers = self.metrics.counter(
            "imreactor_login_msg_server_answers",
            "Answers to clients asking for a msg_server, by how they asked and the result",
            ("via", "result"),
        )
        self.router = Router()
        self.router.add("/msg_server", self._http_msg_server)
        # The web chat at "/" (the longest prefix wins: only what no other route takes),
        # its libraries and the schema it speaks (generated by scripts/gen_proto.py).
        self.router.add("/", StaticFiles(WEB_ROOT / "chat", "/"))
        self.router.add("/vendor/", StaticFiles(WEB_ROOT / "vendor", "/vendor/", index=False))
        self.router.add("/proto/", StaticFiles(WEB_ROOT / "proto", "/proto/", index=False))
        self.metrics.routes(self.router)  # /metrics, /healthz, /readyz
        self.dashboard.routes(self.router)  # /dashboard, /dashboard/, /dashboard/data
        self.http = HttpConnections(self.router)

    def start(self) -> None:
        c = self.config
        https = public_server_context(c.cert_file, c.key_file, "login") if c.cert_file else None
        self._servers.append(self.loop.listen(c.listen_host, c.http_port, self.http, ssl=https))
        self._servers.append(
            self.loop.listen(
                c.listen_host,
                c.msg_server_port,
                self._msg_link,
                ssl=link_server_context(c, "login"),
            )
        )
        if c.client_port:
            self._servers.append(self.loop.listen(c.listen_host, c.client_port, self._client_link))

    @property
    def ports(self) -> dict[str, int]:
        names = ["http", "msg_server", "client"]
        return {name: srv.port for name, srv in zip(names, self._servers, strict=False)}

    def drain(self, done: Done) -> None:
        """Stop accepting; answer the HTTP requests in progress and close those
        connections; close the msg_server and client links after what is queued on them
        (answers are given as requests arrive); ``done()`` once all are closed. msg_servers
        reconnect with backoff and register again with whichever login_server is up."""
        self._close_listeners()
        self.http.finish()
        for link in self.keepalive:
            link.conn.close()
        when_idle(self.loop, lambda: bool(self.http.open or len(self.keepalive)), done)

    def close(self) -> None:
        self.metrics.close()
        self._close_listeners()

    def _close_listeners(self) -> None:
        for srv in self._servers:
            srv.close()
        self._servers.clear()

    # -- msg_server links -----------------------------------------------------------------

    def _msg_link(self) -> ImConnection:
        return _MsgServerLink(self, self.msg_dispatch, self.keepalive, self._link_policy)

    def _on_msg_serv_info(
        self, link: _MsgServerLink, msg: server_pb.IMMsgServInfo, seq: int
    ) -> None:
        self.registry.register(link, msg)

    def _on_user_cnt_update(
        self, link: _MsgServerLink, msg: server_pb.IMUserCntUpdate, seq: int
    ) -> None:
        self.registry.update_count(link, msg.user_action)

    def _on_kick_user(
        self, link: _MsgServerLink, msg: server_pb.IMServerKickUser, seq: int
    ) -> None:
        # An administrator's request (a disabled or deleted account): every msg_server
        # closes the user's sessions. Passed on in order on each link, so once the
        # answer is sent, every registered msg_server has it queued.
        targets = [other for other in self.registry.links() if other is not link]
        for other in targets:
            other.send(msg)
        log.info(
            "sessions of user %d closed on %d msg_server(s) (asked by %s)",
            msg.user_id,
            len(targets),
            link.conn.remote_address,
            extra=ids(user=msg.user_id),
        )
        link.send(msg, seq)

    # -- clients over TCP -----------------------------------------------------------------

    def _client_link(self) -> ImConnection:
        return ImConnection(self.client_dispatch, self.keepalive, self._link_policy)

    def _on_msg_serv_req(self, link: ImConnection, msg: login_pb.IMMsgServReq, seq: int) -> None:
        code, entry = self.registry.pick()
        self._count_answer("tcp", code)
        rsp = login_pb.IMMsgServRsp(result_code=base.ResultType.ValueType(code))
        if entry is not None:
            rsp.prior_ip, rsp.backip_ip, rsp.port = entry.ip1, entry.ip2, entry.port
        link.send(rsp, seq)

    # -- HTTP -----------------------------------------------------------------------------

    def _http_msg_server(self, request: Request) -> Response:
        code, entry = self.registry.pick()
        self._count_answer("http", code)
        body: dict[str, Any]
        if entry is None:
            msg = "没有msg_server" if code == base.REFUSE_REASON_NO_MSG_SERVER else "负载过高"
            body = {"code": code, "msg": msg}
        else:
            body = {
                "code": 0,
                "msg": "",
                "priorIP": entry.ip1,
                "backupIP": entry.ip2,
                "port": str(entry.port),  # a string: clients parse it from a string
                "msfsPrior": self.config.msfs_prior,
                "msfsBackup": self.config.msfs_backup,
                "discovery": self.config.discovery,
            }
            if entry.tls_port:  # ours, after every original key: old clients never look
                body["tlsPort"] = str(entry.tls_port)
            if entry.ws_port:
                body["wsURL"] = f"ws://{_url_host(entry.ip1)}:{entry.ws_port}/"
            if entry.wss_port:
                body["wssURL"] = f"wss://{_url_host(entry.ip1)}:{entry.wss_port}/"
        return 200, JSON, json.dumps(body, ensure_ascii=False).encode()

    def _count_answer(self, via: str, code: int) -> None:
        result = (
            "ok" if code == 0 else "none" if code == base.REFUSE_REASON_NO_MSG_SERVER else "full"
        )
        self._answers.inc(via, result)

    def _ready(self) -> tuple[bool, dict[str, Any]]:
        # Ready means a client asking now gets an address: at least one msg_server has
        # registered. The body says how many, so a supervisor can wait for all of them.
        count = len(self.registry)
        return count > 0, {"msg_servers": count}


def _url_host(host: str) -> str:
    """``host`` as a URL's authority wants it (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host else host


class _MsgServerLink(ImConnection):
    """login_server's side of a msg_server link: forgets the msg_server when it closes."""

    def __init__(
        self,
        owner: LoginServer,
        dispatcher: Dispatcher[_MsgServerLink],
        keepalive: Keepalive,
        policy: LinkPolicy,
    ) -> None:
        super().__init__(dispatcher, keepalive, policy)
        self.owner = owner

    def on_closed(self, exc: BaseException | None) -> None:
        self.owner.dashboard.forget(self)
        self.owner.registry.forget(self)
