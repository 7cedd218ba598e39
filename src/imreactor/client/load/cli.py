"""``imreactor load`` on the command line, and one whole run on a new loop.

:func:`run_load` and :func:`execute` run one :class:`~.driver.LoadRun` in the calling
thread; :func:`run` is the command (``--processes N``: :func:`~.multi.run_processes`).
Exit status of the command: 0 if the run verified clean, 1 if it did not, 2
for options that cannot make a run.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import IO

from ...accounts import (
    LOAD_ORIGIN,
    AccountsError,
    create_users,
    data_dir_database,
    data_dir_has_database,
    delete_users_of_origin,
)
from ...net import EventLoop
from ...net.limits import raise_open_files_limit
from ..tls import add_tls_arguments
from .driver import LoadRun
from .multi import run_processes, split
from .options import DEFAULT_PASSWORD, LoadOptions
from .report import LoadReport

log = logging.getLogger(__name__)


def run_load(options: LoadOptions, *, progress: IO[str] | None = None) -> LoadReport:
    """Run a whole load test on a new loop in the calling thread; returns its report.

    Raises ValueError for impossible options. SIGINT (in the main thread) stops
    sending and still verifies; a second SIGINT stops waiting.
    """
    return execute(options, progress=progress).report()


def execute(
    options: LoadOptions,
    *,
    progress: IO[str] | None = None,
    prepare: Callable[[LoadRun], None] | None = None,
    before_shutdown: Callable[[LoadRun], None] | None = None,
) -> LoadRun:
    """:func:`run_load`, returning the finished run (its :meth:`LoadRun.report` made).

    ``prepare(run)`` is called on the new run before it starts (to set
    :attr:`LoadRun.before_sending`, say); ``before_shutdown(run)`` once the report
    is made, while every connection is still open (the loop is not running then).
    """
    options.check()
    limit = raise_open_files_limit()
    needed = len(options.user_names()) * options.devices + 64
    if limit is not None and limit < needed:
        log.warning("RLIMIT_NOFILE is %d; %d connections need about %d", limit, needed, needed)
    loop = EventLoop()
    try:
        run = LoadRun(loop, options, progress=progress)
        if prepare is not None:
            prepare(run)
        if threading.current_thread() is threading.main_thread():
            loop.add_signal_handler(signal.SIGINT, run.interrupt)
        loop.call_soon(run.start)
        loop.run()
        run.report()
        if before_shutdown is not None:
            before_shutdown(run)
        run.shutdown()
        loop.run()
    finally:
        loop.close()
    return run


def add_arguments(ap: argparse.ArgumentParser) -> None:
    add_tls_arguments(ap)
    ap.add_argument(
        "--login-url",
        default="http://127.0.0.1:8080",
        help="login_server; every client asks its /msg_server (default %(default)s)",
    )
    target = ap.add_mutually_exclusive_group()
    target.add_argument("--msg-server", metavar="HOST:PORT", help="skip login_server; connect here")
    target.add_argument(
        "--msg-servers",
        metavar="HOST:PORT,...",
        type=lambda text: [entry.strip() for entry in text.split(",") if entry.strip()],
        help="skip login_server; user i logs in at entry i mod n (a pair's two users, and "
        "consecutive group members, on different servers)",
    )
    target.add_argument(
        "--echo",
        metavar="HOST:PORT",
        help="reference run: the same connections and senders against a PDU echo server",
    )
    ap.add_argument(
        "--users",
        type=int,
        default=200,
        help="users load0..loadN-1 (default 200; ignored with --group-size)",
    )
    ap.add_argument("--user-prefix", default="load", help="user name prefix (default load)")
    ap.add_argument(
        "--processes",
        type=int,
        default=1,
        metavar="N",
        help="spread the users over N load processes, each on its own loopback source "
        "address, and merge their verification (1:1 runs; see client/load/multi.py)",
    )
    ap.add_argument(
        "--source-host",
        metavar="ADDR",
        help="bind every connection's local end to ADDR (default: the OS picks; with "
        "--processes and loopback targets, 127.0.1.<k+1> for process k)",
    )
    ap.add_argument("--password", default=DEFAULT_PASSWORD, help="every user's password")
    ap.add_argument(
        "--pairs", type=int, default=None, help="sending pairs (default users // 2; rest idle)"
    )
    ap.add_argument("--duplex", action="store_true", help="both users of a pair send")
    ap.add_argument(
        "--group-size",
        type=int,
        default=None,
        metavar="M",
        help="group run: users load0..loadM-1, a temporary group of them all (no pairs)",
    )
    ap.add_argument(
        "--senders",
        type=int,
        default=None,
        metavar="K",
        help="group run: the first K members send group messages (default 1)",
    )
    ap.add_argument(
        "--devices",
        type=int,
        choices=(1, 2),
        default=1,
        help="2: every user also logs in as a mobile client (receives copies)",
    )
    ap.add_argument(
        "--in-flight",
        type=int,
        default=1,
        help="unacknowledged messages per sender (1: send the next once acked)",
    )
    ap.add_argument("--rate", type=float, default=None, help="target messages/s overall")
    ap.add_argument("--duration", type=float, default=None, help="seconds of sending")
    ap.add_argument("--count", type=int, default=None, help="messages to send overall")
    ap.add_argument("--size", type=int, default=64, help="msg_data bytes (default 64)")
    ap.add_argument("--login-concurrency", type=int, default=64, help="logins at a time")
    ap.add_argument("--login-retry", type=float, default=10.0, help="retry 'not ready' for (s)")
    ap.add_argument("--login-timeout", type=float, default=10.0, help="seconds per login try")
    ap.add_argument("--ack-timeout", type=float, default=10.0, help="seconds to wait for an ack")
    ap.add_argument("--drain", type=float, default=5.0, help="seconds to wait for deliveries")
    ap.add_argument(
        "--no-receipts",
        action="store_true",
        help="do not answer deliveries with IMMsgDataAck (clients do)",
    )
    ap.add_argument(
        "--reconnect",
        action="store_true",
        help="a dropped connection logs in again (after a random wait) and catches up from "
        "history; acked messages must still all arrive (1:1 runs)",
    )
    ap.add_argument(
        "--reconnect-jitter",
        type=float,
        default=5.0,
        metavar="S",
        help="each reconnect first waits a random 0..S seconds (default 5)",
    )
    ap.add_argument(
        "--create-users",
        action="store_true",
        help="create the users first, marked as the load generator's (see --cleanup)",
    )
    ap.add_argument(
        "--cleanup",
        action="store_true",
        help="delete every user --create-users ever made (and only those), then exit",
    )
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--database", help="storage URL for --create-users / --cleanup")
    where.add_argument(
        "--data-dir", help="an 'imreactor up' data dir, for --create-users / --cleanup"
    )
    ap.add_argument(
        "--ws",
        action="store_true",
        help="speak WebSocket to msg_server: login_server's wsURL (wssURL with --tls); with "
        "--msg-server/--msg-servers the addresses are ws_ports",
    )
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    ap.add_argument("--no-progress", action="store_true", help="no progress line on stderr")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``imreactor load`` to the CLI's subcommands."""
    p = sub.add_parser("load", help="verifying load generator (1:1 and group messages)")
    add_arguments(p)
    p.set_defaults(run=run)


def options_from(args: argparse.Namespace) -> LoadOptions:
    return LoadOptions(
        login_url=args.login_url,
        msg_server=args.msg_server,
        msg_servers=args.msg_servers,
        echo=args.echo,
        users=args.users,
        pairs=args.pairs,
        group_size=args.group_size,
        senders=args.senders,
        duplex=args.duplex,
        devices=args.devices,
        in_flight=args.in_flight,
        rate=args.rate,
        duration_s=args.duration,
        count=args.count,
        size=args.size,
        password=args.password,
        user_prefix=args.user_prefix,
        source_host=args.source_host,
        login_concurrency=args.login_concurrency,
        login_retry_s=args.login_retry,
        login_timeout_s=args.login_timeout,
        ack_timeout_s=args.ack_timeout,
        drain_s=args.drain,
        receipts=not args.no_receipts,
        reconnect=args.reconnect,
        reconnect_jitter_s=args.reconnect_jitter,
        tls=args.tls,
        ws=args.ws,
        ca_file=args.ca,
    )


class _Usage(ValueError):
    """Options that cannot be used: exit status 2."""


def _database(args: argparse.Namespace, what: str) -> str:
    """The storage URL ``--database`` or ``--data-dir`` names (the data dir's, as for
    ``imreactor up``); a data dir that holds no database is refused, not created."""
    if args.database:
        url: str = args.database
        return url
    if not args.data_dir:
        raise _Usage("needs --database or --data-dir")
    url = data_dir_database(args.data_dir)
    if not data_dir_has_database(args.data_dir):
        raise _Usage(f"no database in {args.data_dir} (imreactor up makes one there)")
    return url


def run(args: argparse.Namespace) -> int:
    """0 if the run verified clean, 1 if not, 2 for unusable options."""
    try:
        options = options_from(args)
        options.check()
        if args.processes != 1:
            split(options, args.processes)  # refuses what cannot be split, before any work
    except ValueError as exc:
        print(f"imreactor load: {exc}", file=sys.stderr)
        return 2
    if args.create_users or args.cleanup:
        what = "--cleanup" if args.cleanup else "--create-users"
        try:
            database = _database(args, what)
            if args.cleanup:
                gone = delete_users_of_origin(database, LOAD_ORIGIN)
                print(f"deleted {len(gone)} users made by imreactor load --create-users")
                return 0
            started = time.monotonic()
            made = create_users(
                database, options.user_names(), options.password, origin=LOAD_ORIGIN
            )
        except (ValueError, OSError, AccountsError) as exc:
            print(f"imreactor load: {what}: {exc}", file=sys.stderr)
            return 2 if isinstance(exc, _Usage) else 1
        took = time.monotonic() - started
        print(f"created {len(made)} users in {took:.1f} s", file=sys.stderr)
    progress = None if args.no_progress else sys.stderr
    if args.processes != 1:
        report = run_processes(options, args.processes, progress=progress)
    else:
        report = run_load(options, progress=progress)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(report.text())
    return 0 if report.ok else 1
