"""What every transport layered on another one shares (TLS over TCP, WebSocket over either).

A layered transport is the protocol of the transport below it and the transport of
the protocol above it (``_app``). This base keeps the part of the
:class:`~imreactor.net.transport.Transport` contract that does not depend on what the
layer does to the bytes: the state and its introspection, close callbacks, and the
flow-control calls passed up once the protocol above exists. Loop thread only.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .transport import CloseCallback, ConnState
from .transport import Protocol as BaseProtocol

if TYPE_CHECKING:
    from .loop import EventLoop

log = logging.getLogger(__name__)


class LayeredTransport(BaseProtocol):
    """Base of :class:`~imreactor.net.tls.TLSTransport` and
    :class:`~imreactor.net.websocket.WebSocketTransport`.

    Subclasses set the attributes in ``__init__``, move ``_state`` and
    ``_established``, and call :meth:`_closed_callbacks` once, when they report the end.
    """

    __slots__ = (
        "_app",
        "_close_callbacks",
        "_established",
        "_loop",
        "_reported",
        "_state",
        "_wpaused",
    )

    _app: BaseProtocol | None
    _close_callbacks: list[CloseCallback] | None
    _established: bool
    _loop: EventLoop
    _reported: bool
    _state: ConnState
    _wpaused: bool

    @property
    def loop(self) -> EventLoop:
        return self._loop

    @property
    def state(self) -> ConnState:
        return self._state

    @property
    def established(self) -> bool:
        return self._established

    @property
    def writing_paused(self) -> bool:
        return self._wpaused

    def add_close_callback(self, callback: CloseCallback) -> None:
        """``callback(transport, exc)`` once it is CLOSED (at once if it already is)."""
        if self._reported:
            self._loop.call_soon(callback, self, None)
            return
        if self._close_callbacks is None:
            self._close_callbacks = []
        self._close_callbacks.append(callback)

    def pause_writing(self) -> None:
        """The transport below is above its high water mark: so is this one."""
        if not self._wpaused:
            self._wpaused = True
            if self._app is not None and self._established:
                self._app.pause_writing()

    def resume_writing(self) -> None:
        """The transport below drained to its low water mark."""
        if self._wpaused:
            self._wpaused = False
            if self._app is not None and self._established:
                self._app.resume_writing()

    def _closed_callbacks(self, exc: BaseException | None) -> None:
        """Run the close callbacks, once; one that raises is logged and the rest still run."""
        callbacks, self._close_callbacks = self._close_callbacks, None
        for callback in callbacks or ():
            try:
                callback(self, exc)  # type: ignore[arg-type]
            except Exception:
                log.exception("close callback %r failed", callback)
