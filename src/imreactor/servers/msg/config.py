"""msg_server configuration (TOML table ``[msg]``)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ...config import (
    ConfigError,
    LogSettings,
    check_addresses,
    check_host,
    check_minimums,
    check_origins,
    check_pair,
    option,
)
from ...redis.url import parse_redis_url
from ..linkauth import LinkSecurity
from ..runner import DrainConfig


def check_redis_url(key: str, value: str) -> None:
    """Empty (no Redis fabric) or a ``redis://`` or ``rediss://`` URL that parses."""
    if value:
        try:
            parse_redis_url(value)
        except ValueError as exc:
            raise ConfigError(f"{key}: {exc}") from None


#: The values of ``presence``: who gets an ``IMUserStatNotify`` (docs/servers.md, "Presence").
PRESENCE_MODES = ("subscribed", "broadcast")


@dataclass
class MsgConfig(DrainConfig, LinkSecurity, LogSettings):
    listen_host: str = option("127.0.0.1", "address clients connect to", check=check_host)
    port: int = option(8000, "TCP port for clients")
    http_port: int = option(0, "HTTP port for /metrics, /healthz, /readyz (0 = none)")
    tls_port: int = option(
        0, "TLS port for clients (0 = none; needs cert_file and key_file); told to login_server"
    )
    ws_port: int = option(
        0,
        "WebSocket port for browsers (0 = none): one binary message per PDU; told to login_server",
    )
    wss_port: int = option(
        0, "WebSocket-over-TLS port (0 = none; needs cert_file and key_file); told to login_server"
    )
    ws_origins: list[str] = option(
        [],
        "Origins of the web pages that may connect to ws_port/wss_port, e.g."
        ' "https://chat.example"; empty = any page (clients log in with a password, not'
        " cookies); clients that send no Origin are not browsers and always admitted",
        check=check_origins,
    )
    cert_file: str = option("", "certificate chain (PEM) clients see on tls_port and wss_port")
    key_file: str = option("", "private key (PEM) of cert_file")
    ip1: str = option("127.0.0.1", "address advertised to clients (priorIP)")
    ip2: str = option("127.0.0.1", "backup address advertised to clients (backupIP)")
    host_name: str = option("msg_server", "name reported to login_server")
    max_conn_cnt: int = option(
        100000, "client connections held at most (fewer if the open-file limit leaves fewer)"
    )
    login_servers: list[str] = option(
        ["127.0.0.1:8100"], "login_server msg_server ports", check=check_addresses
    )
    db_proxies: list[str] = option(
        ["127.0.0.1:10600"], "db_proxy_server addresses", check=check_addresses
    )
    route_servers: list[str] = option(
        [], "route_server addresses (empty: single server)", check=check_addresses
    )
    # The Redis fabric (servers/msg/redis_fabric.py; docs/servers.md, "The Redis fabric").
    redis: str = option(
        "",
        'Redis of the Redis fabric, "redis://[:password@]host:port/db" (rediss:// for TLS):'
        " presence and relay across msg_servers without route_server (empty: none; not with"
        " route_servers)",
        check=check_redis_url,
    )
    redis_ca_file: str = option(
        "",
        "with a rediss:// redis: the CA (PEM) that signed Redis's certificate, whose name"
        " must match the URL's host (empty: the system's CAs)",
    )
    redis_node: str = option(
        "", "this msg_server's name in Redis, unique in the cluster (empty: ip1:port)"
    )
    redis_presence_ttl_s: float = option(
        15.0,
        "with redis: the heartbeat key's lifetime; the users of a msg_server that stopped"
        " renewing it count as offline after this long and are reported so within a third more",
    )
    redis_timeout_s: float = option(5.0, "with redis: a command not answered in this long fails")
    redis_stream_max: int = option(
        100_000, "with redis: entries a msg_server's relay stream keeps at most (trimmed)"
    )
    sessions_desktop: int = option(
        1, "desktop sessions one user may hold (TeamTalk: 1; a newer login kicks the oldest)"
    )
    sessions_mobile: int = option(1, "mobile sessions one user may hold (TeamTalk: 1)")
    sessions_web: int = option(
        4, "browser sessions (client type 0x21, CLIENT_TYPE_WEB) one user may hold"
    )
    sessions_script: int = option(
        4, "script and bot sessions (client type 0x41, e.g. imreactor send) one user may hold"
    )
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
    msg_rate_per_s: float = option(
        50.0, "messages a connection may send per second (sustained); above it, reading pauses"
    )
    msg_burst: int = option(
        200, "messages a connection may send at once; a debt beyond it more closes it (flooding)"
    )
    max_pdu_bytes: int = option(1 << 20, "largest PDU a client may send")
    reconnect_delays_s: list[float] = option(
        [4.0, 8.0, 16.0, 32.0, 64.0], "waits between reconnect attempts to peer servers"
    )
    # Presence (servers/msg/server.py; docs/servers.md, msg_server "Presence").
    presence: str = option(
        "subscribed",
        'who gets IMUserStatNotify: "subscribed" (the connections that named the user in an'
        ' IMUsersStatReq) or "broadcast" (every online user, as TeamTalk does; for small teams)',
    )
    max_subscriptions: int = option(
        1000,
        'users one connection may subscribe to (presence = "subscribed"); the status of'
        " further ones is still answered, but they are not subscribed",
    )
    # Failed-login throttling (servers/msg/throttle.py; docs/servers.md, "Login throttling").
    throttle_account_free: int = option(
        3, "failed logins of one account name that cost nothing before it must wait"
    )
    throttle_account_lockout: int = option(
        10, "failed logins of one account name that lock it for throttle_lockout_s"
    )
    throttle_address_free: int = option(
        20, "failed logins from one IP address that cost nothing before it must wait"
    )
    throttle_address_lockout: int = option(
        100, "failed logins from one IP address that lock it for throttle_lockout_s"
    )
    throttle_delay_s: float = option(
        1.0, "wait after the first failure past the free ones; doubles with each further one"
    )
    throttle_max_delay_s: float = option(60.0, "longest wait short of a lockout")
    throttle_lockout_s: float = option(
        900.0,
        "how long a lockout lasts; a name or address with no failure for this long is forgotten",
    )
    throttle_answer_delay_s: float = option(
        1.0,
        "a throttled login is answered after this long (at most its wait and half of"
        " login_timeout_s): a guesser waits"
        " instead of retrying at once; 0 answers at once",
    )
    throttle_max_entries: int = option(
        100_000, "names (and, separately, addresses) remembered at most; oldest forgotten first"
    )

    def __post_init__(self) -> None:
        self.check_link_security("msg")
        check_pair(self, "msg", "cert_file", "key_file")
        for key in ("tls_port", "wss_port"):
            if getattr(self, key) and not self.cert_file:
                raise ConfigError(f"msg.{key}: needs cert_file and key_file")
        check_minimums(
            self,
            "msg",
            {
                "throttle_account_free": 0,
                "throttle_account_lockout": 1,
                "throttle_address_free": 0,
                "throttle_address_lockout": 1,
                "throttle_delay_s": 0,
                "throttle_max_delay_s": 0,
                "throttle_lockout_s": 0,
                "throttle_answer_delay_s": 0,
                "throttle_max_entries": 1,
                "max_subscriptions": 0,
                "msg_rate_per_s": 0.001,
                "msg_burst": 1,
                "redis_presence_ttl_s": 1.0,
                "redis_stream_max": 100,
                "sessions_desktop": 1,
                "sessions_mobile": 1,
                "sessions_web": 1,
                "sessions_script": 1,
            },
        )
        if self.redis and self.route_servers:
            raise ConfigError("msg.redis: a cluster relays through Redis or route_server, not both")
        if self.redis_ca_file and not (self.redis and parse_redis_url(self.redis).tls):
            raise ConfigError("msg.redis_ca_file: only with a rediss:// redis (TLS)")
        if self.redis_ca_file and not os.path.isfile(self.redis_ca_file):
            raise ConfigError(f"msg.redis_ca_file: no such file {self.redis_ca_file!r}")
        if "|" in self.redis_node:
            raise ConfigError(f"msg.redis_node: must not contain '|', got {self.redis_node!r}")
        # from_mapping checks types; which strings are modes is ours to check.
        if self.presence not in PRESENCE_MODES:
            raise ConfigError(
                f'msg.presence: must be "subscribed" or "broadcast", got {self.presence!r}'
            )
        for kind in ("account", "address"):
            free = getattr(self, f"throttle_{kind}_free")
            lockout = getattr(self, f"throttle_{kind}_lockout")
            if lockout <= free:
                raise ConfigError(
                    f"msg.throttle_{kind}_lockout: must be more than throttle_{kind}_free"
                    f" ({free}), got {lockout!r}"
                )
        if self.throttle_max_delay_s > self.throttle_lockout_s:
            raise ConfigError(
                "msg.throttle_max_delay_s: must be at most throttle_lockout_s"
                f" ({self.throttle_lockout_s!r}), got {self.throttle_max_delay_s!r}"
            )
