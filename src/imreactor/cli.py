"""The ``imreactor`` command: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from typing import Any

from . import __version__, logs

Runner = Callable[[argparse.Namespace], int]


def _echo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from .servers import echo

    p = sub.add_parser("echo", help="run the PDU echo server")
    echo.add_arguments(p)
    p.set_defaults(run=echo.run)


def _server(name: str, module: str, help_: str) -> Callable[[Any], None]:
    def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        mod = importlib.import_module(f"imreactor.servers.{module}.main")
        p = sub.add_parser(name, help=help_)
        mod.add_arguments(p)
        p.set_defaults(run=mod.run)

    return register


def _up(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from .servers import suite

    p = sub.add_parser("up", help="run the whole suite on this machine (SQLite by default)")
    suite.add_arguments(p)
    p.set_defaults(run=suite.run)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="imreactor", description=__doc__)
    ap.add_argument("--version", action="version", version=f"imreactor {__version__}")
    logs.add_arguments(ap)
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in (
        _echo,
        _server("login-server", "login", "run login_server alone"),
        _server("msg-server", "msg", "run one msg_server alone"),
        _server("db-proxy-server", "dbproxy", "run db_proxy_server alone"),
        _server("route-server", "route", "run route_server alone"),
        _server("msfs", "msfs", "run msfs (the image and small-file store) alone"),
        _up,
        importlib.import_module("imreactor.admin").register,
        importlib.import_module("imreactor.cluster").register,
        importlib.import_module("imreactor.client.load").register,
        importlib.import_module("imreactor.client.chat").register,
    ):
        register(sub)
    for command in sub.choices.values():
        logs.add_arguments(command, sub=True)  # `imreactor up --log-format json` too
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Until a server has read its file (runner.RoleMain), the command line alone.
    logs.configure(args.command, logs.settings_of(args))
    run: Runner = args.run
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
