"""``imreactor db-proxy-server -c FILE``: run db_proxy_server alone."""

from __future__ import annotations

from ..runner import RoleMain
from .config import DbProxyConfig
from .server import DbProxyServer

main = RoleMain(
    "db_proxy_server",
    "dbproxy",
    DbProxyConfig,
    DbProxyServer,
    lambda s: f"port={s.port} database={s.config.database.split('://')[0]}",
)
add_arguments = main.add_arguments
run = main.run
