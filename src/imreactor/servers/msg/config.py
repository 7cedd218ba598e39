"""msg_server configuration (TOML table ``[msg]``)."""

from __future__ import annotations

from dataclasses import dataclass

from ...config import option


@dataclass
class MsgConfig:
    listen_host: str = option("127.0.0.1", "address clients connect to")
    port: int = option(8000, "TCP port for clients")
    ip1: str = option("127.0.0.1", "address advertised to clients (priorIP)")
    ip2: str = option("127.0.0.1", "backup address advertised to clients (backupIP)")
    host_name: str = option("msg_server", "name reported to login_server")
    max_conn_cnt: int = option(100000, "users this server accepts before login_server skips it")
    login_servers: list[str] = option(["127.0.0.1:8100"], "login_server msg_server ports")
    db_proxies: list[str] = option(["127.0.0.1:10600"], "db_proxy_server addresses")
    route_servers: list[str] = option([], "route_server addresses (empty: single server)")
    login_timeout_s: float = option(15.0, "close a connection not logged in after this long")
    client_timeout_s: float = option(120.0, "close a desktop client silent for this long")
    mobile_timeout_s: float = option(300.0, "close a mobile client silent for this long")
    reorder_wait_s: float = option(
        0.5,
        "with route_servers: how long a relayed message may wait for a smaller msg_id of its"
        " conversation before it is delivered anyway",
    )
    group_cache_ttl_s: float = option(300.0, "refetch a cached group member list after this long")
    db_timeout_s: float = option(10.0, "give up on a db_proxy request after this long")
    msg_rate_per_s: float = option(50.0, "messages a connection may send per second (sustained)")
    msg_burst: int = option(200, "messages a connection may send in a burst")
    max_pdu_bytes: int = option(1 << 20, "largest PDU a client may send")
    reconnect_delays_s: list[float] = option(
        [4.0, 8.0, 16.0, 32.0, 64.0], "waits between reconnect attempts to peer servers"
    )
