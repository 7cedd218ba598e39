"""Reading login_server's ``/msg_server`` answer: which msg_server to connect to.

One reading for every client (the SDK's blocking lookup and the load generator's
non-blocking one): ``code`` 0 with ``priorIP`` and ``port`` (a string, as TeamTalk
sends it), or ``tlsPort`` when the client wants TLS; a client that speaks WebSocket
reads ``wsURL`` (``wssURL`` with TLS) instead, our addition to the answer. A refusal
(1: no msg_server, 2: all full) or an answer that cannot be used is a
:class:`LocateError`. :func:`locate_msg_server` is the blocking lookup (any thread but
a loop's).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from ssl import SSLContext
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from .errors import ClientError

#: The path clients ask (TeamTalk's clients ask exactly this).
MSG_SERVER_PATH = "/msg_server"

_REFUSALS = {1: "no msg_server is up", 2: "every msg_server is full"}


class LocateError(Exception):
    """login_server gave no usable msg_server; the message is one readable line.

    ``code`` is login_server's refusal code (worth asking again later), or None for an
    answer that cannot be used at all.
    """

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class MsgServer(NamedTuple):
    """Where a client goes: ``host:port``, and for a WebSocket the path to ask for."""

    host: str
    port: int
    #: The resource of the ``wsURL`` (e.g. ``"/"``); None: plain TCP (or TLS).
    ws_path: str | None = None
    #: Where images go (``msfsPrior``, else ``msfsBackup``; ``""`` if it has neither).
    msfs_url: str = ""


def _accepted(answer: object, url: str) -> dict[str, Any]:
    """``answer`` if it is a ``code`` 0 answer; LocateError (with the code) if not."""
    if not isinstance(answer, dict):
        raise LocateError(f"bad answer from login_server at {url}: {answer!r}")
    code = answer.get("code")
    if code != 0:
        why = _REFUSALS.get(code) if isinstance(code, int) else None
        raise LocateError(
            f"login_server at {url} refused: {why or answer.get('msg')} (code {code})",
            code if isinstance(code, int) else -1,
        )
    return answer


def msg_server_ws_address(answer: object, url: str, *, tls: bool = False) -> MsgServer:
    """The WebSocket of a decoded ``/msg_server`` answer: its ``"wsURL"`` (with ``tls``:
    ``"wssURL"``) as host, port and path.

    An answer without it is refused (the msg_server has no WebSocket port), as is a URL
    of another scheme or without a host or port.
    """
    key, scheme = ("wssURL", "wss") if tls else ("wsURL", "ws")
    answer = _accepted(answer, url)
    where = answer.get(key)
    if where is None:
        raise LocateError(
            f"login_server at {url} offers msg_server {answer.get('priorIP')} without {key}"
        )
    bad = LocateError(f"bad answer from login_server at {url}: {key} {where!r}")
    try:
        parts = urlsplit(str(where))
        host, port = parts.hostname, parts.port  # port: ValueError when out of range
    except ValueError:
        raise bad from None
    if parts.scheme != scheme or not host or not port:
        raise bad
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return MsgServer(host, port, path)


def msg_server_address(answer: object, url: str, *, tls: bool = False) -> tuple[str, int]:
    """``(host, port)`` from a decoded ``/msg_server`` answer of the login_server at ``url``.

    With ``tls`` the port is ``"tlsPort"``; an answer without one is refused, never
    read as a plain port.
    """
    answer = _accepted(answer, url)
    if tls and "tlsPort" not in answer:
        raise LocateError(
            f"login_server at {url} offers msg_server {answer.get('priorIP')} without TLS"
        )
    try:
        host, port = str(answer["priorIP"]), int(answer["tlsPort" if tls else "port"])
    except (KeyError, TypeError, ValueError):
        raise LocateError(f"bad answer from login_server at {url}: {answer}") from None
    if not 0 < port < 65536:
        raise LocateError(f"bad answer from login_server at {url}: port {port}")
    return host, port


def locate_msg_server(
    url: str, timeout_s: float = 10.0, *, ssl: SSLContext | None = None
) -> tuple[str, int]:
    """Ask login_server (``http(s)://host:port``) which msg_server to use: ``(host, port)``.

    With ``ssl`` the port is the msg_server's TLS port (``"tlsPort"``), and an
    ``https://`` login_server is verified with that context. Raises
    :class:`ClientError` with one readable line if login_server cannot be reached,
    answers garbage, has no msg_server to offer, or (with ``ssl``) offers one
    without TLS.
    """
    found = locate(url, timeout_s, ssl=ssl)
    return found.host, found.port


def locate(
    url: str, timeout_s: float = 10.0, *, ssl: SSLContext | None = None, ws: bool = False
) -> MsgServer:
    """:func:`locate_msg_server`, with the msfs URL of the answer; with ``ws``, the
    msg_server's WebSocket (:func:`msg_server_ws_address`) instead of its TCP port."""
    where = url.rstrip("/") + MSG_SERVER_PATH
    https = ssl if where.startswith("https:") else None
    try:
        with urllib.request.urlopen(where, timeout=timeout_s, context=https) as rsp:
            answer = json.loads(rsp.read())
    except urllib.error.URLError as exc:
        raise ClientError(f"cannot reach login_server at {url}: {exc.reason}") from None
    except (OSError, ValueError) as exc:
        raise ClientError(f"bad answer from login_server at {url}: {exc}") from None
    try:
        if ws:
            found = msg_server_ws_address(answer, url, tls=ssl is not None)
        else:
            found = MsgServer(*msg_server_address(answer, url, tls=ssl is not None))
    except LocateError as exc:
        raise ClientError(str(exc)) from None
    msfs = answer.get("msfsPrior") or answer.get("msfsBackup") or ""
    return found._replace(msfs_url=msfs if isinstance(msfs, str) else "")
