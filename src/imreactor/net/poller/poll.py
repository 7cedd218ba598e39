"""``poll(2)`` backend: portable, no fd limit, O(registered fds) per call."""

from __future__ import annotations

import select


class PollPoller:
    """:class:`~imreactor.net.poller.Poller` on ``select.poll``."""

    name = "poll"

    def __init__(self) -> None:
        self._p = select.poll()
        self.register = self._p.register
        self.modify = self._p.modify
        self.unregister = self._p.unregister
        self._poll = self._p.poll

    def poll(self, timeout: float | None) -> list[tuple[int, int]]:
        if timeout is None:
            return self._poll()
        # poll() takes milliseconds; round up so a sub-millisecond wait does not spin.
        ms = timeout * 1000.0
        whole = int(ms)
        return self._poll(whole + 1 if ms > whole else whole)

    def close(self) -> None:
        pass
