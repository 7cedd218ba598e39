"""What every server's ``main`` does: a loop, signals, a READY line, a clean stop."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from .. import logs
from ..config import ConfigError, load
from ..net import EventLoop
from ..net.limits import raise_open_files_limit

log = logging.getLogger(__name__)


def serve(
    name: str,
    start: Callable[[EventLoop], str],
    stop: Callable[[], None] | None = None,
    poller: str | None = None,
) -> int:
    """Run one server until SIGINT/SIGTERM.

    ``start(loop)`` creates the server's listeners and links and returns a
    one-line description of where it listens; ``READY <name> <description>`` is
    then printed on stdout (tests and ``imreactor up`` wait for it). ``stop()``
    runs after the loop has stopped, before the loop is closed.
    """
    raise_open_files_limit()  # a server holds one descriptor per client
    loop = EventLoop(poller)
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    loop.add_signal_handler(signal.SIGINT, loop.stop)
    where = start(loop)
    log.info("%s ready: %s (%s poller)", name, where, loop.backend)
    sys.stdout.write(f"READY {name} {where}\n")
    sys.stdout.flush()
    try:
        loop.run()
    finally:
        if stop is not None:
            stop()
        # Let close notifications and final writes run before the fds go away.
        loop.run_once(0)
        loop.close()
    log.info("%s stopped", name)
    return 0


class RoleServer(Protocol):
    """What every server role offers its ``main``."""

    def start(self) -> None: ...

    def close(self) -> None: ...


S = TypeVar("S", bound=RoleServer)


class RoleMain(Generic[S]):
    """The ``add_arguments``/``run`` pair of ``imreactor <role> -c FILE`` for one server role.

    ``make(loop, config)`` builds the server from the ``[section]`` table of the
    file (as ``config_cls``); ``describe(server)`` says where it listens, for
    the READY line.
    """

    def __init__(
        self,
        name: str,
        section: str,
        config_cls: type[Any],
        make: Callable[[EventLoop, Any], S],
        describe: Callable[[S], str],
    ) -> None:
        self.name = name
        self.section = section
        self.config_cls = config_cls
        self.make = make
        self.describe = describe

    def add_arguments(self, ap: argparse.ArgumentParser) -> None:
        ap.add_argument(
            "-c", "--config", help=f"TOML file with a [{self.section}] table (default: defaults)"
        )
        ap.add_argument("--poller", default=None, help="epoll, kqueue, poll or select")

    def run(self, args: argparse.Namespace) -> int:
        try:
            config = load(self.config_cls, args.config, self.section)
        except ConfigError as exc:
            print(f"imreactor {self.name}: {exc}", file=sys.stderr)
            return 2
        logs.configure_server(self.name, args, config)
        servers: list[S] = []

        def start(loop: EventLoop) -> str:
            server = self.make(loop, config)
            server.start()
            servers.append(server)
            return self.describe(server)

        def stop() -> None:
            for server in servers:
                server.close()

        return serve(self.name, start, stop, args.poller)
