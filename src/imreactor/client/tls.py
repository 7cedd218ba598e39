"""TLS for clients: the context that verifies a msg_server's (or login_server's) certificate.

A client over TLS checks the server's certificate chain and its host name, always: against
``ca_file`` when one is given (the CA that ``imreactor up --tls`` prints, or a deployment's
private CA), else against the system's trust store. There is no switch to skip verification.
"""

from __future__ import annotations

import argparse
import ssl
from pathlib import Path

from ..net.tls import client_context as net_client_context


def client_context(ca_file: str | Path | None = None) -> ssl.SSLContext:
    """The reactor's client context (:func:`imreactor.net.tls.client_context`: chain and
    host-name verification, TLS 1.2 or newer, no renegotiation) for ``ca_file``.

    Raises :class:`ValueError` with one readable line if ``ca_file`` cannot be read
    as PEM certificates.
    """
    try:
        return net_client_context(None if ca_file is None else str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot use CA file {ca_file}: {exc}") from None


def add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    """``--tls`` and ``--ca FILE``: reach msg_server on its TLS port, verified."""
    parser.add_argument(
        "--tls", action="store_true", help='connect to msg_server\'s TLS port ("tlsPort")'
    )
    parser.add_argument(
        "--ca",
        metavar="FILE",
        help="CA certificates to verify servers with (implies --tls; default: the system's)",
    )


def tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The client TLS context ``--tls``/``--ca`` ask for, or None for plain TCP."""
    if not (args.tls or args.ca):
        return None
    return client_context(args.ca)
