"""db_proxy_server configuration (TOML table ``[dbproxy]``)."""

from __future__ import annotations

from dataclasses import dataclass

from ...config import option


@dataclass
class DbProxyConfig:
    listen_host: str = option("127.0.0.1", "address msg_servers connect to")
    port: int = option(10600, "TCP port for msg_servers")
    database: str = option(
        "sqlite:///data/imreactor.db",
        "storage URL: sqlite:///PATH (relative to the working directory) or postgresql://...",
    )
    threads: int = option(
        64,
        "worker threads; a thread waits while its message commits, so this also caps the messages"
        " sharing one commit",
    )
    max_pending: int = option(10000, "requests queued or running before new ones are refused")
    max_batch: int = option(256, "messages stored in one transaction at most")
    heartbeat_s: float = option(5.0, "heartbeat to a msg_server after this long without sending")
    timeout_s: float = option(30.0, "close a msg_server link silent for this long")
