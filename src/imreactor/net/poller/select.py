"""``select(2)`` backend: the lowest common denominator (fds < FD_SETSIZE)."""

from __future__ import annotations

import select as _select

from . import READABLE, WRITABLE


class SelectPoller:
    """:class:`~imreactor.net.poller.Poller` on ``select.select``."""

    name = "select"

    def __init__(self) -> None:
        self._readers: set[int] = set()
        self._writers: set[int] = set()

    def register(self, fd: int, events: int) -> None:
        if fd in self._readers or fd in self._writers:
            raise FileExistsError(fd)
        self._set(fd, events)

    def modify(self, fd: int, events: int) -> None:
        self._readers.discard(fd)
        self._writers.discard(fd)
        self._set(fd, events)

    def unregister(self, fd: int) -> None:
        self._readers.discard(fd)
        self._writers.discard(fd)

    def _set(self, fd: int, events: int) -> None:
        if events & READABLE:
            self._readers.add(fd)
        if events & WRITABLE:
            self._writers.add(fd)

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
