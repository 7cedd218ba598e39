"""Level-triggered epoll backend (Linux).

Why level-triggered: a handler may stop reading before a socket is drained (a
read-size limit, a paused connection) and must be woken again next iteration;
edge-triggered epoll would need every handler to drain to EAGAIN or lose the
wakeup, which is exactly how the original netlib could stall. The epoll masks
are the ``poll(2)`` masks (EPOLLIN == POLLIN == 1, EPOLLOUT == POLLOUT == 4,
EPOLLERR == 8, EPOLLHUP == 16), so results pass through without translation.
"""

from __future__ import annotations

import select


class EpollPoller:
    """:class:`~imreactor.net.poller.Poller` on ``epoll(7)``."""

    name = "epoll"

    def __init__(self) -> None:
        self._ep = select.epoll()
        # Bound methods cached: these are called for every registration change.
        self.register = self._ep.register
        self.modify = self._ep.modify
        self.unregister = self._ep.unregister
        # epoll.poll takes seconds and None (wait forever), exactly this interface,
        # so the loop calls it with no Python frame in between. CPython rounds the
        # timeout up to whole milliseconds, so a timer due in 0.3 ms does not turn
        # into a busy loop of zero-timeout polls.
        self.poll = self._ep.poll

    def close(self) -> None:
        self._ep.close()

    def fileno(self) -> int:
        return self._ep.fileno()
