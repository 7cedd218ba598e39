"""``select(2)`` backend: the lowest common denominator (fds < FD_SETSIZE)."""

from __future__ import annotations

import select as _select

from . import READABLE, WRITABLE


class SelectPoller:
    """:class:`~imreactor.net.poller.Poller` on ``select.select``."""

    name = "select"

    def __init__(self) -> None:
        # Dicts, not sets: select() reports ready fds in the order it was given them,
        # so insertion order makes dispatch follow registration order, as poll(2)'s
        # does. A set's order follows fd numbers modulo its table size, which made
        # two connections' dispatch order depend on which fds they happened to get.
        self._readers: dict[int, None] = {}
        self._writers: dict[int, None] = {}

    def register(self, fd: int, events: int) -> None:
        if fd in self._readers or fd in self._writers:
            raise FileExistsError(fd)
        self._set(fd, events)

    def modify(self, fd: int, events: int) -> None:
        # An fd that stays in a set keeps its place in the order.
        if not events & READABLE:
            self._readers.pop(fd, None)
        if not events & WRITABLE:
            self._writers.pop(fd, None)
        self._set(fd, events)

    def unregister(self, fd: int) -> None:
        self._readers.pop(fd, None)
        self._writers.pop(fd, None)

    def _set(self, fd: int, events: int) -> None:
        if events & READABLE:
            self._readers.setdefault(fd)
        if events & WRITABLE:
            self._writers.setdefault(fd)

    def poll(self, timeout: float | None) -> list[tuple[int, int]]:
        if not self._readers and not self._writers:
            # select() with three empty sets is not portable (Windows); just sleep.
            if timeout is None or timeout > 0:
                import time

                time.sleep(0.05 if timeout is None else timeout)
            return []
        r, w, _ = _select.select(self._readers, self._writers, (), timeout)
        if not w:
            return [(fd, READABLE) for fd in r]
        ready: dict[int, int] = dict.fromkeys(r, READABLE)
        for fd in w:
            ready[fd] = ready.get(fd, 0) | WRITABLE
        return list(ready.items())

    def close(self) -> None:
        self._readers.clear()
        self._writers.clear()
