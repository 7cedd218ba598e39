"""A blocking client's status (:class:`ClientStatus`) and why its last connection ended.

:class:`StatusBoard` keeps both under one lock, for any thread: the connection's
loop thread reports losses, the reconnect supervisor attempts and refusals, callers
:meth:`~imreactor.client.blocking.Client.close`. Every change is passed to
``on_change`` under that lock, so whoever listens sees the changes in the order they
were made (``on_change`` must not block or call back into the board).
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable
from typing import Any


class ClientStatus(enum.StrEnum):
    """What :attr:`Client.status` says, and what ``on_status`` is called with."""

    CONNECTED = "connected"  #: connected, not logged in yet
    ONLINE = "online"  #: logged in (after a reconnect: and caught up)
    OFFLINE = "offline"  #: the connection dropped; a reconnect is scheduled
    RECONNECTING = "reconnecting"  #: a reconnect attempt is under way
    KICKED = "kicked"  #: the server kicked this login (another one of the same class)
    FAILED = "failed"  #: reconnecting stopped: the saved credentials were refused
    CLOSED = "closed"  #: closed for good (by :meth:`Client.close` or without reconnect)


class StatusBoard:
    """The current :class:`ClientStatus`, and what the last connection ended with."""

    def __init__(self, on_change: Callable[[ClientStatus], Any] | None = None) -> None:
        self.status = ClientStatus.CONNECTED
        #: What closed the last connection (None: a clean close), or the refusal that
        #: stopped reconnecting.
        self.closed_with: BaseException | None = None
        #: A reconnect's login was refused: reconnecting has stopped for good.
        self.gave_up = False
        self._on_change = on_change
        self._lock = threading.Lock()

    def set(self, status: ClientStatus) -> None:
        """Change to ``status`` and tell ``on_change``; nothing if it is the status already."""
        with self._lock:
            if status is self.status:
                return
            self.status = status
            if self._on_change is not None:
                self._on_change(status)

    def lost(self, exc: BaseException | None) -> bool:
        """The connection closed with ``exc``; False (``exc`` not kept) after :meth:`give_up`."""
        with self._lock:
            if self.gave_up:
                return False  # closed_with keeps the refusal
            self.closed_with = exc
            return True

    def give_up(self, refusal: BaseException) -> None:
        """Reconnecting stopped for good because of ``refusal`` (kept as :attr:`closed_with`)."""
        with self._lock:
            self.gave_up = True
            self.closed_with = refusal
