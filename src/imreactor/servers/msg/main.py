"""``imreactor msg-server -c FILE``: run one msg_server."""

from __future__ import annotations

import argparse

from ...config import load
from ...net import EventLoop
from ..runner import serve
from .config import MsgConfig
from .server import MsgServer


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("-c", "--config", help="TOML file with a [msg] table (default: defaults)")
    ap.add_argument("--poller", default=None, help="epoll, kqueue, poll or select")


def run(args: argparse.Namespace) -> int:
    config = load(MsgConfig, args.config, "msg")
    holder: list[MsgServer] = []

    def start(loop: EventLoop) -> str:
        server = MsgServer(loop, config)
        server.start()
        holder.append(server)
        return f"port={server.port}"

    return serve("msg_server", start, lambda: holder[0].close() if holder else None, args.poller)
