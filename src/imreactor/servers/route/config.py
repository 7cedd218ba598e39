"""route_server configuration (TOML table ``[route]``)."""

from __future__ import annotations

from dataclasses import dataclass

from ...config import option


@dataclass
class RouteConfig:
    listen_host: str = option("127.0.0.1", "address route_server listens on")
    port: int = option(8200, "TCP port msg_servers connect to")
    heartbeat_s: float = option(5.0, "heartbeat to a msg_server after this long without sending")
    timeout_s: float = option(30.0, "close a msg_server link silent for this long")
