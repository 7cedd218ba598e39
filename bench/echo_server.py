"""Frame-echo server for the peer benchmarks (bench/echo.sh, bench/tls_echo.py).

The peers' contract: ``--port``, ``--reuseport``, print a line starting with
READY once listening, exit on SIGTERM. The server is imreactor's own echo
server, unchanged; with ``--tls CERT KEY`` the same server listens with
``ssl=`` (imreactor's TLS layer, :mod:`imreactor.net.tls`).
"""

from __future__ import annotations

import argparse
import signal
import sys

from imreactor.net import EventLoop
from imreactor.net.limits import raise_open_files_limit
from imreactor.net.tls import server_context
from imreactor.servers.echo import EchoProtocol, add_arguments, run


def run_tls(args: argparse.Namespace, cert_file: str, key_file: str) -> int:
    """:func:`imreactor.servers.echo.run`, listening with TLS."""
    raise_open_files_limit()
    loop = EventLoop(args.poller)
    server = loop.listen(
        args.host,
        args.port,
        EchoProtocol,
        reuse_port=args.reuseport,
        backlog=4096,
        ssl=server_context(cert_file, key_file),
    )
    loop.call_every(1.0, lambda: None)  # a periodic timer, as every real server has
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    loop.add_signal_handler(signal.SIGINT, loop.stop)
    sys.stdout.write(f"READY {args.host} {server.port}\n")
    sys.stdout.flush()
    try:
        loop.run()
    finally:
        server.close()
        loop.close()
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add_arguments(ap)
    ap.add_argument(
        "--tls",
        nargs=2,
        metavar=("CERT", "KEY"),
        help="serve TLS with this certificate chain and key (PEM)",
    )
    args = ap.parse_args()
    if args.tls is None:
        return run(args)
    return run_tls(args, *args.tls)


if __name__ == "__main__":
    sys.exit(main())
