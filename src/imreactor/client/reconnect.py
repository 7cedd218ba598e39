"""The reconnect supervisor of a blocking client: a thread that reconnects with backoff.

:class:`Supervisor` sleeps until :meth:`~Supervisor.wake` (any thread; the client
calls it when a logged-in connection drops). Then, if ``needed()`` (the connection
is down and there is someone to log in as), it runs attempts until one succeeds or
``ended()`` (closed, kicked, refused): before each one it waits the next
:class:`~imreactor.net.Backoff` delay, then calls ``attempt()``, which connects,
logs in and catches up, and returns True once that is done, or False when
reconnecting must stop for good (it reports why itself). An attempt that raises
``ClientError``, ``TimeoutError`` or ``OSError`` failed: ``retry()`` cleans up
(abort the connection, say offline) and the next delay starts. After a success the
backoff is reset and :attr:`~Supervisor.reconnects` counted before ``online()``
runs, so whoever is told "online" sees the count already.

Threads: ``needed``, ``ended``, ``attempt``, ``retry`` and ``online`` run on the
supervisor's own thread ("imreactor-client-reconnect"), never the loop thread, so
``attempt`` may block on requests. :meth:`~Supervisor.start`,
:meth:`~Supervisor.wake`, :meth:`~Supervisor.stop` and :meth:`~Supervisor.join`
are for any thread; :meth:`~Supervisor.stop` ends a delay at once, and an attempt
under way when its waits fail (the client closing them).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from ..net import Backoff
from .errors import ClientError

log = logging.getLogger(__name__)

#: Reconnect schedule of a client: quick at first (a restarted server is back in a
#: second or two), then gentler. Jitter spreads many clients cut off together.
DEFAULT_RECONNECT_DELAYS_S: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)

#: How long :meth:`Supervisor.join` waits for the thread to end.
JOIN_S = 5.0


class Supervisor:
    """One reconnect thread; the hooks are described in the module docstring."""

    def __init__(
        self,
        backoff: Backoff,
        *,
        needed: Callable[[], bool],
        ended: Callable[[], bool],
        attempt: Callable[[], bool],
        retry: Callable[[], Any],
        online: Callable[[], Any],
    ) -> None:
        self.backoff = backoff
        #: Successful reconnects so far.
        self.reconnects = 0
        self._needed = needed
        self._ended = ended
        self._attempt = attempt
        self._retry = retry
        self._online = online
        self._wake = threading.Event()  # there is work (or the thread must stop)
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="imreactor-client-reconnect", daemon=True
        )

    def start(self) -> None:
        """Start the thread (once)."""
        self._thread.start()

    def wake(self) -> None:
        """Look for work: reconnect if ``needed()``."""
        self._wake.set()

    def stop(self) -> None:
        """Make the thread end: at once if idle or in a delay, else after the attempt."""
        self._stopping.set()
        self._wake.set()

    def join(self) -> None:
        """Wait up to :data:`JOIN_S` for the thread (not when called on it, or unstarted)."""
        if self._thread.ident is not None and threading.current_thread() is not self._thread:
            self._thread.join(JOIN_S)

    @property
    def alive(self) -> bool:
        """Whether the thread may still reconnect; once False, it never will again."""
        return self._thread.is_alive()

    def _run(self) -> None:
        # The thread ends once reconnecting is over for good (closed, kicked, refused),
        # so that "no reconnect will follow" is a fact to wait for, not a timeout.
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stopping.is_set() or self._ended():
                return
            if self._needed():
                try:
                    self._reconnect()
                except Exception:
                    if self._stopping.is_set():
                        return
                    log.exception("reconnect failed")
                if self._ended():
                    return

    def _reconnect(self) -> None:
        """Attempt with backoff until one succeeds, reconnecting ends, or :meth:`stop`."""
        while not self._ended():
            if self._stopping.wait(self.backoff.delay()):
                return
            try:
                if not self._attempt():
                    return
            except (ClientError, TimeoutError, OSError) as exc:
                if self._ended():
                    return
                log.info("reconnect attempt %d failed: %s", self.backoff.failures, exc)
                self._retry()
                continue
            self.backoff.reset()
            self.reconnects += 1
            self._online()
            return
