"""``imreactor login-server -c FILE``: run login_server alone."""

from __future__ import annotations

import argparse

from ...config import load
from ...net import EventLoop
from ..runner import serve
from .config import LoginConfig
from .server import LoginServer


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("-c", "--config", help="TOML file with a [login] table (default: defaults)")
    ap.add_argument("--poller", default=None, help="epoll, kqueue, poll or select")


def run(args: argparse.Namespace) -> int:
    config = load(LoginConfig, args.config, "login")
    holder: list[LoginServer] = []

    def start(loop: EventLoop) -> str:
        server = LoginServer(loop, config)
        server.start()
        holder.append(server)
        return " ".join(f"{k}={v}" for k, v in server.ports.items())

    return serve("login_server", start, lambda: holder[0].close() if holder else None, args.poller)
