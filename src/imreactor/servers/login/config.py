"""login_server configuration (TOML table ``[login]``)."""

from __future__ import annotations

from dataclasses import dataclass

from ...config import LogSettings, check_host, check_pair, option
from ..linkauth import LinkSecurity
from ..runner import DrainConfig


@dataclass
class LoginConfig(DrainConfig, LinkSecurity, LogSettings):
    listen_host: str = option(
        "127.0.0.1", "address for all of login_server's ports", check=check_host
    )
    http_port: int = option(8080, "HTTP port for GET /msg_server, /healthz, /readyz, /metrics")
    msg_server_port: int = option(8100, "TCP port msg_servers register on")
    cert_file: str = option("", "certificate chain (PEM) for HTTPS on http_port; empty: plain HTTP")
    key_file: str = option("", "private key (PEM) of cert_file")
    client_port: int = option(8008, "TCP port for IMMsgServReq from clients (0 = off)")
    msfs_prior: str = option("", "file server URL given to clients (msfsPrior)")
    msfs_backup: str = option("", "backup file server URL (msfsBackup)")
    discovery: str = option("", "discovery URL given to clients")
    heartbeat_s: float = option(5.0, "heartbeat to a msg_server after this long without sending")
    timeout_s: float = option(30.0, "forget a msg_server silent for this long")

    def __post_init__(self) -> None:
        self.check_link_security("login")
        check_pair(self, "login", "cert_file", "key_file")
