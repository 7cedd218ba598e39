"""A blocking client's callbacks, run on a thread of their own.

:class:`Notifier` takes events from any thread (:meth:`~Notifier.put`, which never
blocks) and runs the matching callbacks on its daemon thread, one event at a time,
in the order they were put: ``on_push(message, seq)`` for every push, then
``on_message`` for an ``IMMsgData`` or ``on_kick`` for an ``IMKickUser``, and
``on_status(status)`` for a :class:`~imreactor.client.status.ClientStatus`. A
callback runs on neither the loop thread nor the caller's, so it may call the
client's blocking methods; one that raises is logged and the next event still runs.
:meth:`~Notifier.close` (any thread) ends the thread after the events already put.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from google.protobuf.message import Message

from ..pdu.proto import im_login_pb2 as login_pb
from ..pdu.proto import im_message_pb2 as msg_pb
from .status import ClientStatus

log = logging.getLogger(__name__)

PushCallback = Callable[[Message, int], Any]
MessageCallback = Callable[[Any], Any]
StatusCallback = Callable[[ClientStatus], Any]
Event = tuple[Message, int] | ClientStatus

#: How long :meth:`Notifier.close` waits for the callback thread to end.
CLOSE_JOIN_S = 5.0


class Notifier:
    """One callback thread for a client's pushes and status changes."""

    def __init__(
        self,
        on_push: PushCallback | None = None,
        on_message: MessageCallback | None = None,
        on_kick: MessageCallback | None = None,
        on_status: StatusCallback | None = None,
    ) -> None:
        self._on_push = on_push
        self._on_message = on_message
        self._on_kick = on_kick
        self._on_status = on_status
        self._events: queue.Queue[Event | None] = queue.Queue()
        self._thread = threading.Thread(
            target=self._run, name="imreactor-client-callbacks", daemon=True
        )
        self._thread.start()

    def put(self, event: Event) -> None:
        """Queue a push ``(message, seq)`` or a status for the callbacks. Any thread."""
        self._events.put(event)

    def close(self) -> None:
        """End the thread once the events put before are done; waits for it unless on it."""
        self._events.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join(CLOSE_JOIN_S)

    def _run(self) -> None:
        while True:
            event = self._events.get()
            if event is None:
                return
            try:
                if isinstance(event, ClientStatus):
                    if self._on_status is not None:
                        self._on_status(event)
                    continue
                message, seq = event
                if self._on_push is not None:
                    self._on_push(message, seq)
                if self._on_message is not None and isinstance(message, msg_pb.IMMsgData):
                    self._on_message(message)
                if self._on_kick is not None and isinstance(message, login_pb.IMKickUser):
                    self._on_kick(message)
            except Exception:
                log.exception("client callback failed for %r", event)
