"""I/O multiplexer backends behind one small interface.

A poller only reports readiness as ``(fd, mask)`` pairs; it knows nothing about
sockets, connections or handlers (the event loop turns readiness into calls).
The mask vocabulary is the one of ``poll(2)``/``epoll(7)`` so that the epoll and
poll backends pass the kernel's masks through untranslated:

- ``READABLE`` (``POLLIN``): data, EOF, or a pending connection to accept;
- ``WRITABLE`` (``POLLOUT``): the send buffer has room, or a connect finished;
- ``ERROR`` (``POLLERR | POLLHUP | POLLNVAL``): reported whatever was asked for.

Backends: :mod:`.epoll` (Linux, level-triggered), :mod:`.kqueue` (BSD, macOS),
:mod:`.poll` and :mod:`.select` (everywhere). :func:`make_poller` picks the best
one the OS has unless told otherwise by name or by the ``IMREACTOR_POLLER``
environment variable.
"""

from __future__ import annotations

import os
import select as _select  # not ``select``: the submodule .select would shadow it
from typing import Protocol

READABLE = 0x001
WRITABLE = 0x004
ERROR = 0x008 | 0x010 | 0x020  # ERR | HUP | NVAL

ENV_VAR = "IMREACTOR_POLLER"


class Poller(Protocol):
    """The four-method interface every backend implements.

    Contract: ``register`` takes an fd that is not registered yet, ``modify`` and
    ``unregister`` one that is. ``events`` is a combination of ``READABLE`` and
    ``WRITABLE`` (0 is allowed: registered but not interested). ``poll`` blocks
    at most ``timeout`` seconds (``None``: until an event; 0: not at all) and
    returns each ready fd once. Level-triggered: an fd stays ready until drained.
    None of the methods are thread-safe; the owning loop calls them.
    """

    name: str

    def register(self, fd: int, events: int) -> None: ...

    def modify(self, fd: int, events: int) -> None: ...

    def unregister(self, fd: int) -> None: ...

    def poll(self, timeout: float | None) -> list[tuple[int, int]]: ...

    def close(self) -> None: ...


def available() -> list[str]:
    """Names of the backends this OS supports, best first."""
    names = []
    if hasattr(_select, "epoll"):
        names.append("epoll")
    if hasattr(_select, "kqueue"):
        names.append("kqueue")
    if hasattr(_select, "poll"):
        names.append("poll")
    names.append("select")
    return names


def make_poller(name: str | None = None) -> Poller:
    """Create a poller by name, else from ``$IMREACTOR_POLLER``, else the best available.

    Raises ``ValueError`` for an unknown or unavailable name.
    """
    name = name or os.environ.get(ENV_VAR) or available()[0]
    if name not in available():
        raise ValueError(f"poller {name!r} is not available here (have: {', '.join(available())})")
    if name == "epoll":
        from .epoll import EpollPoller

        return EpollPoller()
    if name == "kqueue":
        from .kqueue import KqueuePoller

        return KqueuePoller()
    if name == "poll":
        from .poll import PollPoller

        return PollPoller()
    from .select import SelectPoller

    return SelectPoller()
