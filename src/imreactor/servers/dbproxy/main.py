"""``imreactor db-proxy-server -c FILE``: run db_proxy_server alone."""

from __future__ import annotations

import argparse

from ...config import load
from ...net import EventLoop
from ..runner import serve
from .config import DbProxyConfig
from .server import DbProxyServer


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("-c", "--config", help="TOML file with a [dbproxy] table (default: defaults)")
    ap.add_argument("--poller", default=None, help="epoll, kqueue, poll or select")


def run(args: argparse.Namespace) -> int:
    config = load(DbProxyConfig, args.config, "dbproxy")
    holder: list[DbProxyServer] = []

    def start(loop: EventLoop) -> str:
        server = DbProxyServer(loop, config)
        server.start()
        holder.append(server)
        return f"port={server.port} database={config.database.split('://')[0]}"

    return serve(
        "db_proxy_server", start, lambda: holder[0].close() if holder else None, args.poller
    )
