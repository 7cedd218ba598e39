"""End-to-end IM benchmark: a real suite, the verifying load generator, and a reference.

For each backend (SQLite; PostgreSQL too with ``--postgres`` when its server
binaries are installed) this starts a real suite (db_proxy_server,
login_server, msg_server as processes, the msg_server's per-connection rate
limit lifted), creates users load0..load<2P-1>, and runs ``imreactor load``
as a separate process: P pairs, one sender each, with 1 and then 16 messages
in flight per sender. Every run logs all users in (the login rate comes from
it), sends for ``--duration`` seconds and verifies every delivery; a run that
does not verify is marked in the table.

Right after each IM run, the same loader with the same connections, senders
and in-flight count runs against ``imreactor echo`` (IMMsgData-sized PDUs
echoed back): round trips/s of the client side and the reactor with no
server work. The ratio IM/echo is steadier across machines than either number.

With ``--cluster`` it measures, in the same run and on SQLite, one msg_server
against ``--cluster-servers`` (3) msg_servers behind a route_server: P pairs
of 1:1 senders (each pair's two users pinned to different msg_servers with
``--msg-servers``, so every message crosses route_server), then a group of
``--group-size`` (100) members spread over the msg_servers the same way, with
``--group-senders`` (1) of them sending; each load with every in-flight count.
It prints acked messages/s and deliveries/s for both layouts and the ratios
cluster/single, and the msg_servers' CPU per delivered message (read from
/proc over each run): the servers' own cost, which the load generator's speed
does not bound.

usage: .venv/bin/python bench/im_e2e.py [--postgres] [--pairs 100] [--duration 10]
       .venv/bin/python bench/im_e2e.py --cluster [--cluster-servers 3] [--group-size 100]
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from imreactor.accounts import create_users
from imreactor.servers.suite import Child, SuiteLayout, stop_children

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from pg import PostgresServer, PostgresUnavailable  # noqa: E402
from proc_cpu import cpu_seconds  # noqa: E402

#: No per-connection rate limit in the way of the measurement.
UNLIMITED = {"msg": {"msg_rate_per_s": 1e9, "msg_burst": 1_000_000_000}}


def free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@contextmanager
def echo_server() -> Iterator[int]:
    """``imreactor echo`` on a free port, for the reference runs; yields the port."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "imreactor", "echo", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        line = proc.stdout.readline() if ready else ""
        if not line.startswith("READY"):
            raise RuntimeError(f"echo server did not start: {line!r}")
        yield int(line.split()[2])
    finally:
        proc.terminate()
        proc.wait(10)


def role_cpu_seconds(children: list[Child], role: str) -> float:
    """User + system CPU seconds used so far by the children whose name starts with ``role``."""
    return sum(sum(cpu_seconds(c.proc.pid)) for c in children if c.name.startswith(role))


def loader(args: list[str], timeout_s: float) -> tuple[dict[str, Any], str]:
    """Run ``imreactor load ... --json``; its report and the command line."""
    cmd = [sys.executable, "-m", "imreactor", "load", *args, "--json", "--no-progress"]
    shown = "imreactor load " + " ".join(args)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{shown} exited {proc.returncode}:\n{proc.stderr}")
    report: dict[str, Any] = json.loads(proc.stdout)
    return report, shown


def run_backend(
    name: str, database: str, data_dir: Path, opts: argparse.Namespace, echo_port: int
) -> list[dict[str, Any]]:
    users = 2 * opts.pairs
    data_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    created = len(create_users(database, [f"load{i}" for i in range(users)], "imreactor"))
    print(f"[{name}] created {created} users in {time.monotonic() - started:.1f} s", flush=True)
    http, login, msg, db = free_ports(4)
    layout = SuiteLayout(
        data_dir=data_dir,
        http_port=http,
        login_port=login,
        msg_ports=[msg],
        db_port=db,
        database=database,
        overrides=UNLIMITED,
    )
    children = layout.start_all()
    rows = []
    timeout = opts.duration + 300
    try:
        for in_flight in opts.in_flight:
            common = [
                "--users",
                str(users),
                "--pairs",
                str(opts.pairs),
                "--in-flight",
                str(in_flight),
                "--duration",
                str(opts.duration),
            ]
            im, im_cmd = loader(["--login-url", f"http://127.0.0.1:{http}", *common], timeout)
            echo, echo_cmd = loader(["--echo", f"127.0.0.1:{echo_port}", *common], timeout)
            row = {"backend": name, "in_flight": in_flight, "im": im, "echo": echo}
            rows.append(row)
            print(
                f"[{name}] {in_flight} in flight: {im['msgs_per_s']:,.0f} msgs/s "
                f"(verified: {im['ok']}), echo {echo['msgs_per_s']:,.0f} round trips/s\n"
                f"    $ {im_cmd}\n    $ {echo_cmd}",
                flush=True,
            )
    finally:
        stop_children(children)
    return rows


def cluster_side(
    label: str, servers: int, data_dir: Path, opts: argparse.Namespace
) -> dict[tuple[str, int], dict[str, Any]]:
    """Start a SQLite suite with ``servers`` msg_servers (and a route_server if more
    than one), run every cluster load against it; (load, in flight) → report."""
    data_dir.mkdir(parents=True, exist_ok=True)
    http, login, db, route, *msg = free_ports(4 + servers)
    layout = SuiteLayout(
        data_dir=data_dir,
        http_port=http,
        login_port=login,
        msg_ports=msg,
        db_port=db,
        route_ports=[route] if servers > 1 else [],
        overrides=UNLIMITED,
    )
    users = max(2 * opts.pairs, opts.group_size)
    started = time.monotonic()
    create_users(layout.database_url, [f"load{i}" for i in range(users)], "imreactor")
    print(f"[{label}] created {users} users in {time.monotonic() - started:.1f} s", flush=True)
    children = layout.start_all()
    targets = ",".join(f"127.0.0.1:{port}" for port in msg)
    loads = {
        "pairs": ["--users", str(2 * opts.pairs), "--pairs", str(opts.pairs)],
        "group": ["--group-size", str(opts.group_size), "--senders", str(opts.group_senders)],
    }
    reports: dict[tuple[str, int], dict[str, Any]] = {}
    try:
        for load, load_args in loads.items():
            for in_flight in opts.in_flight:
                cpu_before = role_cpu_seconds(children, "msg")
                report, cmd = loader(
                    [
                        "--msg-servers",
                        targets,
                        *load_args,
                        "--in-flight",
                        str(in_flight),
                        "--duration",
                        str(opts.duration),
                    ],
                    opts.duration + 300,
                )
                # The msg_servers' own cost, which the loader's speed does not bound: CPU
                # per delivered message over the whole run (logins included).
                cpu = role_cpu_seconds(children, "msg") - cpu_before
                report["msg_cpu_us_per_delivery"] = cpu * 1e6 / max(report["deliveries"], 1)
                reports[(load, in_flight)] = report
                print(
                    f"[{label}] {load}, {in_flight} in flight: "
                    f"{report['msgs_per_s']:,.0f} msgs/s, "
                    f"{report['deliveries_per_s']:,.0f} deliveries/s, "
                    f"msg_server CPU {report['msg_cpu_us_per_delivery']:.1f} µs/delivery "
                    f"(verified: {report['ok']}, loader CPU {report['loader_cpu_s']:.1f} s)\n"
                    f"    $ {cmd}",
                    flush=True,
                )
    finally:
        stop_children(children)
    return reports


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "-"


def cluster_table(
    single: dict[tuple[str, int], dict[str, Any]],
    cluster: dict[tuple[str, int], dict[str, Any]],
    opts: argparse.Namespace,
) -> str:
    n = opts.cluster_servers
    lines = [
        f"IM cluster: 1 msg_server vs {n} msg_servers + route_server, SQLite, "
        f"{opts.duration:g} s per run, {os.cpu_count()} CPUs; users pinned round-robin "
        "with --msg-servers (a pair's users, and neighbouring group members, on different "
        "msg_servers)",
        "",
        f"| load | in flight | acked msgs/s, 1 | acked msgs/s, {n} | {n} / 1 "
        f"| deliveries/s, 1 | deliveries/s, {n} | {n} / 1 "
        f"| ack p50 / p99 ms, 1 | ack p50 / p99 ms, {n} "
        f"| msg_server CPU µs/delivery, 1 | {n} | verified |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    names = {
        "pairs": f"1:1, {opts.pairs} pairs",
        "group": f"group of {opts.group_size}, {opts.group_senders} sender"
        + ("s" if opts.group_senders != 1 else ""),
    }
    for key in single:
        one, many = single[key], cluster[key]
        bad = []
        for label, report in (("1", one), (str(n), many)):
            if not report["ok"]:
                errors = {k: v for k, v in report["errors"].items() if v}
                detail = ", ".join(f"{k} {v}" for k, v in errors.items()) or "nothing acked"
                bad.append(f"NO ({label}: {detail})")
        lines.append(
            f"| {names[key[0]]} | {key[1]} "
            f"| {one['msgs_per_s']:,.0f} | {many['msgs_per_s']:,.0f} "
            f"| {ratio(many['msgs_per_s'], one['msgs_per_s'])} "
            f"| {one['deliveries_per_s']:,.0f} | {many['deliveries_per_s']:,.0f} "
            f"| {ratio(many['deliveries_per_s'], one['deliveries_per_s'])} "
            f"| {ms(one['ack_latency']['p50_ms'])} / {ms(one['ack_latency']['p99_ms'])} "
            f"| {ms(many['ack_latency']['p50_ms'])} / {ms(many['ack_latency']['p99_ms'])} "
            f"| {one['msg_cpu_us_per_delivery']:.1f} | {many['msg_cpu_us_per_delivery']:.1f} "
            f"| {'; '.join(bad) or 'yes'} |"
        )
    return "\n".join(lines)


def run_cluster(opts: argparse.Namespace, work: Path) -> int:
    single = cluster_side("1 msg_server", 1, work / "single", opts)
    cluster = cluster_side(
        f"{opts.cluster_servers} msg_servers", opts.cluster_servers, work / "cluster", opts
    )
    if opts.out:
        with open(opts.out, "a") as f:
            for layout, side in (("single", single), ("cluster", cluster)):
                for (load, in_flight), report in side.items():
                    row = {"layout": layout, "load": load, "in_flight": in_flight, "im": report}
                    f.write(json.dumps(row) + "\n")
    print()
    print(cluster_table(single, cluster, opts))
    every = [*single.values(), *cluster.values()]
    return 0 if all(report["ok"] for report in every) else 1


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def table(rows: list[dict[str, Any]], opts: argparse.Namespace) -> str:
    lines = [
        f"IM end to end: {opts.pairs} pairs ({2 * opts.pairs} connections, one sender per "
        f"pair), {opts.duration:g} s per run, {os.cpu_count()} CPUs",
        "",
        "| backend | in flight | acked msgs/s | ack p50 / p99 ms | delivery p50 / p99 ms "
        "| logins/s | echo round trips/s | IM / echo | verified |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        im, echo = row["im"], row["echo"]
        ratio = im["msgs_per_s"] / echo["msgs_per_s"] if echo["msgs_per_s"] else 0.0
        bad = {k: v for k, v in im["errors"].items() if v}
        verified = "yes" if im["ok"] else "NO " + ", ".join(f"{k} {v}" for k, v in bad.items())
        lines.append(
            f"| {row['backend']} | {row['in_flight']} | {im['msgs_per_s']:,.0f} "
            f"| {ms(im['ack_latency']['p50_ms'])} / {ms(im['ack_latency']['p99_ms'])} "
            f"| {ms(im['delivery_latency']['p50_ms'])} / "
            f"{ms(im['delivery_latency']['p99_ms'])} "
            f"| {im['logins_per_s']:,.0f} | {echo['msgs_per_s']:,.0f} | {ratio:.3f} "
            f"| {verified} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--postgres", action="store_true", help="also run on PostgreSQL")
    ap.add_argument("--pairs", type=int, default=100, help="client pairs (default 100)")
    ap.add_argument(
        "--in-flight",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 16],
        help="comma-separated in-flight counts (default 1,16)",
    )
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per run (default 10)")
    ap.add_argument("--out", help="also write the raw reports as JSON lines here")
    ap.add_argument("--keep", action="store_true", help="keep the data directory (logs)")
    cluster = ap.add_argument_group("--cluster: one msg_server against several (SQLite)")
    cluster.add_argument(
        "--cluster", action="store_true", help="1:1 and group loads on 1 and on N msg_servers"
    )
    cluster.add_argument(
        "--cluster-servers", type=int, default=3, help="msg_servers of the cluster (default 3)"
    )
    cluster.add_argument(
        "--group-size", type=int, default=100, help="members of the group (default 100)"
    )
    cluster.add_argument(
        "--group-senders", type=int, default=1, help="members that send (default 1)"
    )
    opts = ap.parse_args()
    if opts.cluster and opts.postgres:
        ap.error("--cluster measures on SQLite only; leave out --postgres")
    if opts.cluster and opts.cluster_servers < 2:
        ap.error("--cluster-servers must be at least 2")

    work = Path(tempfile.mkdtemp(prefix="imreactor-bench-"))
    if opts.cluster:
        try:
            return run_cluster(opts, work)
        finally:
            if opts.keep:
                print(f"data and logs kept in {work}")
            else:
                shutil.rmtree(work, ignore_errors=True)
    rows: list[dict[str, Any]] = []
    try:
        with echo_server() as echo_port:
            rows += run_backend(
                "sqlite", f"sqlite:///{work / 'sqlite' / 'im.db'}", work / "sqlite", opts, echo_port
            )
            if opts.postgres:
                try:
                    pg = PostgresServer()
                except PostgresUnavailable as exc:
                    print(f"PostgreSQL skipped: {exc}", flush=True)
                else:
                    with pg:
                        url = pg.create_database("bench")
                        rows += run_backend("postgres", url, work / "postgres", opts, echo_port)
    finally:
        if opts.keep:
            print(f"data and logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if opts.out:
        with open(opts.out, "a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    print()
    print(table(rows, opts))
    return 0 if rows and all(row["im"]["ok"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
