"""What every server's ``main`` does: a loop, signals, a READY line, a drain, a clean stop.

SIGTERM (or SIGINT) drains a server that can: it stops accepting, finishes and
answers what is in flight, closes its clients and links, and exits; after
``drain_timeout_s`` it exits anyway (logged). A second signal stops it at once.
docs/deployment.md, "Drain", says what each role does and what clients see.
"""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from .. import logs
from ..config import ConfigError, load, option
from ..net import EventLoop
from ..net.limits import raise_open_files_limit

log = logging.getLogger(__name__)

#: How often a draining server looks whether what it waits for is done.
DRAIN_POLL_S = 0.02
DEFAULT_DRAIN_TIMEOUT_S = 30.0

Done = Callable[[], None]


def check_finite(key: str, value: float) -> None:
    """A number of seconds that is a number (TOML allows ``inf`` and ``nan``)."""
    if not math.isfinite(value):
        raise ConfigError(f"{key}: {value!r} seconds; give a finite number")


@dataclass
class DrainConfig:
    """The ``drain_timeout_s`` key every server role has (one table per role)."""

    drain_timeout_s: float = option(
        DEFAULT_DRAIN_TIMEOUT_S,
        "on SIGTERM the server stops accepting, answers what is in flight and closes its"
        " clients; after this long it exits anyway (logged). Keep systemd's TimeoutStopSec"
        " above it",
        check=check_finite,
    )


def when_idle(loop: EventLoop, busy: Callable[[], bool], then: Done) -> None:
    """Call ``then()`` on the loop once ``busy()`` has been False at two polls in a row.

    Polled every :data:`DRAIN_POLL_S`: two idle polls let answers that worker threads
    handed to the loop just before the first one (``call_soon_threadsafe``) go out first.
    """
    idle_polls = 0

    def poll() -> None:
        nonlocal idle_polls
        idle_polls = 0 if busy() else idle_polls + 1
        if idle_polls >= 2:
            then()
        else:
            loop.call_later(DRAIN_POLL_S, poll)

    poll()


def serve(
    name: str,
    start: Callable[[EventLoop], str],
    stop: Callable[[], None] | None = None,
    poller: str | None = None,
    *,
    drain: Callable[[Done], None] | None = None,
    drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S,
) -> int:
    """Run one server until SIGINT/SIGTERM.

    ``start(loop)`` creates the server's listeners and links and returns a
    one-line description of where it listens; ``READY <name> <description>`` is
    then printed on stdout (tests and ``imreactor up`` wait for it). On the first
    signal, ``drain(done)`` (if given) begins the drain and calls ``done()`` once the
    server has nothing left to do; the loop stops then, or after ``drain_timeout_s``
    (logged), or at a second signal. ``stop()`` runs after the loop has stopped,
    before the loop is closed.
    """
    raise_open_files_limit()  # a server holds one descriptor per client
    loop = EventLoop(poller)
    draining = False

    def on_signal(signum: int) -> None:
        nonlocal draining
        if drain is None or draining:
            if draining:
                log.warning("%s: %s during the drain; stopping now", name, signal.strsignal(signum))
            loop.stop()
            return
        draining = True
        began = loop.time()
        log.info("%s draining (at most %g s)", name, drain_timeout_s)
        finished = False

        def timed_out() -> None:
            nonlocal finished
            finished = True
            log.warning(
                "%s: drain not finished after drain_timeout_s = %g s; exiting anyway",
                name,
                drain_timeout_s,
            )
            loop.stop()

        timer = loop.call_later(drain_timeout_s, timed_out)

        def drained() -> None:
            nonlocal finished
            if not finished:
                finished = True
                timer.cancel()
                log.info("%s drained in %.2f s", name, loop.time() - began)
                loop.stop()

        drain(drained)

    loop.add_signal_handler(signal.SIGTERM, on_signal, signal.SIGTERM)
    loop.add_signal_handler(signal.SIGINT, on_signal, signal.SIGINT)
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
    """What every server role offers its ``main``.

    A role may also offer ``drain(done)``: stop accepting, finish and answer what is
    in flight, close its clients, then call ``done()`` once (on the loop thread);
    ``close()`` still runs after it. A role without one stops at once on SIGTERM.
    """

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

        def drain(done: Done) -> None:
            role_drain: Callable[[Done], None] | None = (
                getattr(servers[0], "drain", None) if servers else None
            )
            if role_drain is not None:
                role_drain(done)
            else:
                done()

        return serve(
            self.name,
            start,
            stop,
            args.poller,
            drain=drain,
            drain_timeout_s=getattr(config, "drain_timeout_s", DEFAULT_DRAIN_TIMEOUT_S),
        )
