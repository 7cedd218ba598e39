"""The ``imreactor`` command: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from . import __version__

Runner = Callable[[argparse.Namespace], int]


def _echo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from .servers import echo

    p = sub.add_parser("echo", help="run the PDU echo server")
    echo.add_arguments(p)
    p.set_defaults(run=echo.run)


def _login(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from .servers.login import main

    p = sub.add_parser("login-server", help="run login_server alone")
    main.add_arguments(p)
    p.set_defaults(run=main.run)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="imreactor", description=__doc__)
    ap.add_argument("--version", action="version", version=f"imreactor {__version__}")
    ap.add_argument(
        "--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default INFO)"
    )
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in (_echo, _login):
        register(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    run: Runner = args.run
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
