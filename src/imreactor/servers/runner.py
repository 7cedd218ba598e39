"""What every server's ``main`` does: a loop, signals, a READY line, a clean stop."""

from __future__ import annotations

import logging
import resource
import signal
import sys
from collections.abc import Callable

from ..net import EventLoop

log = logging.getLogger(__name__)


def raise_fd_limit() -> None:
    """Use the hard limit on open files: a server holds one fd per client."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


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
    raise_fd_limit()
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
