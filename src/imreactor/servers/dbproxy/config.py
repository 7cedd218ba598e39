"""db_proxy_server configuration (TOML table ``[dbproxy]``)."""

from __future__ import annotations

from dataclasses import dataclass

from ...config import ConfigError, LogSettings, check_host, check_minimums, option
from ...storage import check_storage_url
from ..linkauth import LinkSecurity
from ..runner import DrainConfig


def _check_database(key: str, url: str) -> None:
    try:
        check_storage_url(url)
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from None


@dataclass
class DbProxyConfig(DrainConfig, LinkSecurity, LogSettings):
    listen_host: str = option("127.0.0.1", "address msg_servers connect to", check=check_host)
    port: int = option(10600, "TCP port for msg_servers")
    http_port: int = option(0, "HTTP port for /metrics, /healthz, /readyz (0 = none)")
    database: str = option(
        "sqlite:///data/imreactor.db",
        "storage URL: sqlite:///PATH (relative to the working directory) or postgresql://...",
        check=_check_database,
    )
    threads: int = option(
        64,
        "worker threads; a thread waits while its message commits, so this also caps the messages"
        " sharing one commit",
    )
    max_pending: int = option(10000, "requests queued or running before new ones are refused")
    max_batch: int = option(256, "messages stored in one transaction at most")
    store_timeout_s: float = option(
        30.0, "a message not yet in a transaction after this long is refused, never stored"
    )
    heartbeat_s: float = option(5.0, "heartbeat to a msg_server after this long without sending")
    timeout_s: float = option(30.0, "close a msg_server link silent for this long")
    hash_threads: int = option(
        2,
        "threads that check password hashes (scrypt); about the number of cores, so a login"
        " storm cannot take the threads other requests need",
    )
    hash_max_pending: int = option(
        256,
        "password checks queued or running before further logins are answered 'busy'"
        " (result 3, which clients retry)",
    )
    credential_cache_size: int = option(
        200_000, "verified credentials remembered (0: none; every login runs a full hash)"
    )
    credential_cache_ttl_s: float = option(
        43_200.0, "a returning login within this long of its last full check costs no hash"
    )

    def __post_init__(self) -> None:
        self.check_link_security("dbproxy")
        check_minimums(
            self,
            "dbproxy",
            {
                "threads": 1,
                "max_pending": 1,
                "max_batch": 1,
                "store_timeout_s": 0.001,
                "hash_threads": 1,
                "hash_max_pending": 1,
                "credential_cache_size": 0,
                "credential_cache_ttl_s": 0,
            },
        )
