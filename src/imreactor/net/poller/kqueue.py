"""kqueue backend (BSD, macOS).

kqueue filters are per direction, so one fd maps to up to two kevents; the
interest mask is remembered per fd to know which filters to add or delete on
``modify``. An ``EV_EOF`` on the read filter is reported as readable: the
handler's ``recv`` then returns ``b""`` or the pending error, which is the one
way every backend reports a closed peer.
"""

from __future__ import annotations

import select as _select_module
from typing import Any

from . import ERROR, READABLE, WRITABLE

# kqueue exists only on BSD and macOS; typed loosely so the module type-checks on Linux.
select: Any = _select_module


class KqueuePoller:
    """:class:`~imreactor.net.poller.Poller` on ``select.kqueue``."""

    name = "kqueue"

    def __init__(self) -> None:
        self._kq = select.kqueue()
        self._interest: dict[int, int] = {}

    def register(self, fd: int, events: int) -> None:
        if fd in self._interest:
            raise FileExistsError(fd)
        self._interest[fd] = 0
        self.modify(fd, events)

    def modify(self, fd: int, events: int) -> None:
        old = self._interest[fd]
        changes = []
        for bit, flt in ((READABLE, select.KQ_FILTER_READ), (WRITABLE, select.KQ_FILTER_WRITE)):
            if events & bit and not old & bit:
                changes.append(select.kevent(fd, flt, select.KQ_EV_ADD))
            elif old & bit and not events & bit:
                changes.append(select.kevent(fd, flt, select.KQ_EV_DELETE))
        if changes:
            self._kq.control(changes, 0, 0)
        self._interest[fd] = events

    def unregister(self, fd: int) -> None:
        events = self._interest.pop(fd)
        changes = []
        if events & READABLE:
            changes.append(select.kevent(fd, select.KQ_FILTER_READ, select.KQ_EV_DELETE))
        if events & WRITABLE:
            changes.append(select.kevent(fd, select.KQ_FILTER_WRITE, select.KQ_EV_DELETE))
        if changes:
            try:
                self._kq.control(changes, 0, 0)
            except OSError:
                pass  # the fd was closed first: the kernel already dropped its filters

    def poll(self, timeout: float | None) -> list[tuple[int, int]]:
        max_events = max(len(self._interest) * 2, 1)
        ready: dict[int, int] = {}
        for kev in self._kq.control(None, max_events, timeout):
            fd = kev.ident
            if kev.filter == select.KQ_FILTER_READ:
                mask = READABLE
            elif kev.filter == select.KQ_FILTER_WRITE:
                mask = WRITABLE
            else:
                continue
            if kev.flags & select.KQ_EV_ERROR:
                mask |= ERROR & 0x008
            ready[fd] = ready.get(fd, 0) | mask
        return list(ready.items())

    def close(self) -> None:
        self._kq.close()

    def fileno(self) -> int:
        return int(self._kq.fileno())
