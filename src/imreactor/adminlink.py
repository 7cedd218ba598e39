"""The admin tools' link to login_server: close every session of one user.

``imreactor user disable`` and ``user del`` store the change, then connect to
login_server's msg_server port as a server of the cluster would (mutual TLS with
the link certificate of the login_server's configuration, when its links are
authenticated), send ``IMServerKickUser`` and wait for login_server to echo it
(same seq): by then it has passed it to every msg_server registered with it, each
of which closes the user's sessions. A login_server that is not listening means no
msg_server is offered to clients and none is registered, so nothing is open to close.

Blocking, one request: a tool's one-shot exchange, not a server's link.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

from .config import ConfigError, load
from .pdu.header import HEADER_LEN, parse_header
from .pdu.imconn import encode_message
from .pdu.proto import im_base_define_pb2 as base
from .pdu.proto import im_server_pb2 as server_pb
from .pdu.registry import ids_of
from .servers.linkauth import link_client_context
from .servers.login.config import LoginConfig

#: How long login_server has to answer (it only queues the message to each msg_server).
ANSWER_TIMEOUT_S = 10.0
#: Largest PDU read back: the echo is a few bytes; anything far larger is not it.
MAX_ANSWER_BYTES = 64 * 1024
_SEQ = 1


class SessionsError(Exception):
    """login_server could not be asked; the message says why, in one line."""


def close_sessions(login_config: Path, user_id: int) -> str:
    """Have the login_server configured in ``login_config`` (a TOML ``[login]`` table)
    close every session of ``user_id``; what happened, in words for the operator."""
    try:
        config = load(LoginConfig, login_config, "login")
        context = link_client_context(config, "login")
    except ConfigError as exc:
        raise SessionsError(f"{login_config}: {exc}") from None
    host = config.listen_host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1" if host != "::" else "::1"  # a wildcard listens on loopback too
    where = f"{host}:{config.msg_server_port}"
    try:
        sock = socket.create_connection((host, config.msg_server_port), ANSWER_TIMEOUT_S)
    except ConnectionRefusedError:
        return f"no login_server at {where}: no suite runs, so no open session to close"
    except OSError as exc:
        raise SessionsError(f"login_server at {where}: {exc.strerror or exc}") from None
    try:
        with _wrapped(sock, context, where) as link:
            kick = server_pb.IMServerKickUser(
                user_id=user_id, client_type=base.CLIENT_TYPE_WINDOWS, reason=0
            )
            link.sendall(encode_message(kick, _SEQ))
            _await_echo(link, where)
    except (OSError, ssl.SSLError) as exc:
        raise SessionsError(f"login_server at {where}: {exc}") from None
    return f"login_server at {where} closed its open sessions"


def _wrapped(sock: socket.socket, context: ssl.SSLContext | None, where: str) -> socket.socket:
    if context is None:
        return sock
    try:
        return context.wrap_socket(sock)
    except (OSError, ssl.SSLError) as exc:
        sock.close()
        raise SessionsError(f"login_server at {where}: link TLS failed: {exc}") from None


def _await_echo(link: socket.socket, where: str) -> None:
    """Read PDUs until login_server's echo of our request (heartbeats may come first)."""
    want = ids_of(server_pb.IMServerKickUser)[1]
    buf = b""
    while True:
        while len(buf) < HEADER_LEN or len(buf) < parse_header(buf).length:
            chunk = link.recv(4096)
            if not chunk:
                raise SessionsError(
                    f"login_server at {where} closed the link without answering"
                    " (an older login_server, or not one of this cluster's servers?)"
                )
            buf += chunk
            if len(buf) >= HEADER_LEN and not HEADER_LEN <= parse_header(buf).length <= (
                MAX_ANSWER_BYTES
            ):
                raise SessionsError(f"{where} answered something that is not a PDU")
        header = parse_header(buf)
        buf = buf[header.length :]
        if header.command_id == want and header.seq == _SEQ:
            return
