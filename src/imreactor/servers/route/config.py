"""route_server configuration (TOML table ``[route]``)."""

from __future__ import annotations

from dataclasses import dataclass

from ...config import LogSettings, check_host, check_minimums, option
from ..linkauth import LinkSecurity
from ..runner import DrainConfig


@dataclass
class RouteConfig(DrainConfig, LinkSecurity, LogSettings):
    listen_host: str = option("127.0.0.1", "address route_server listens on", check=check_host)
    port: int = option(8200, "TCP port msg_servers connect to")
    http_port: int = option(0, "HTTP port for /metrics, /healthz, /readyz (0 = none)")
    heartbeat_s: float = option(5.0, "heartbeat to a msg_server after this long without sending")
    timeout_s: float = option(30.0, "close a msg_server link silent for this long")
    max_link_subscriptions: int = option(
        100_000,
        "users one msg_server link may subscribe to; a link that asks for more gets every"
        " presence notify (as a TeamTalk msg_server does) until it sends a smaller set again"
        " (it does on every reconnect)",
    )

    def __post_init__(self) -> None:
        self.check_link_security("route")
        check_minimums(self, "route", {"max_link_subscriptions": 0})
