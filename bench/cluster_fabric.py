"""Cluster fabrics: the same cross-server loads relayed through Redis and through route_server.

Three suites on SQLite run side by side for the whole run: one msg_server alone (the
single-server figure), ``--msg-servers`` (3) msg_servers behind a route_server, and as
many on the Redis fabric with a private ``redis-server`` (configured as ``imreactor up
--redis`` starts one: append-only file, ``appendfsync always``). On each, the verifying
load generator (``imreactor load``, every delivery checked) runs:

- ``1:1``: ``--pairs`` pairs, each pair's two users on different msg_servers
  (``--msg-servers``), so every message crosses the fabric; ``--in-flight`` messages
  unacknowledged per sender (throughput, and the latencies under it);
- ``1:1 at a rate``: the same pairs at ``--rate`` messages/s overall, one in flight
  per sender, well below either fabric's limit: the latencies at equal load;
- ``group``: one group of ``--group-size`` (100) members spread the same way,
  ``--group-senders`` (1) of them sending.

The fabrics alternate: every repetition runs each load on each suite in turn, the
order rotated per repetition, and the table shows medians over ``--reps``. Besides
the loader's figures it reads from ``/proc`` the CPU that route_server and
redis-server used over each run, and from the msg_servers' ``/metrics`` the PDUs
they relayed out (``imreactor_msg_relayed_total{direction="out"}``), and prints the
CPU each spent per relayed PDU. Ratios are Redis / route_server from the same run.

usage: .venv/bin/python bench/cluster_fabric.py [--reps 3] [--duration 10]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from imreactor.accounts import create_users
from imreactor.redis import RedisProcess
from imreactor.servers.suite import Child, SuiteLayout, stop_children

sys.path.insert(0, str(Path(__file__).resolve().parent))
from im_e2e import UNLIMITED, free_ports, loader, role_cpu_seconds
from proc_cpu import cpu_seconds

SIDES = ("single", "route", "redis")
LABELS = {"single": "1 msg_server", "route": "route_server", "redis": "Redis"}


@dataclass
class Side:
    """One running suite and what the bench reads from it."""

    name: str
    layout: SuiteLayout
    children: list[Child]
    redis: RedisProcess | None = None
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def targets(self) -> str:
        return ",".join(f"127.0.0.1:{port}" for port in self.layout.msg_ports)

    def fabric_cpu_s(self) -> float:
        """CPU seconds used so far by what relays: route_server or redis-server."""
        if self.redis is not None:
            assert self.redis.pid is not None, "redis-server is not running"
            return sum(cpu_seconds(self.redis.pid))
        return role_cpu_seconds(self.children, "route_server")

    def relayed_out(self) -> float:
        """PDUs the msg_servers relayed out so far (0 for a single msg_server)."""
        total = 0.0
        for name, url in self.layout.metrics_urls().items():
            if not name.startswith("msg_server"):
                continue
            with urllib.request.urlopen(url, timeout=5) as rsp:
                text = rsp.read().decode()
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if (
                        sample.name == "imreactor_msg_relayed_total"
                        and sample.labels.get("direction") == "out"
                    ):
                        total += sample.value
        return total


def free_run(n: int, avoid: set[int]) -> int:
    """A port p with p..p+n-1 free now and none in ``avoid``, below the ephemeral range
    (which outgoing connections take ports from at any time)."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 30000 - n)
        ports = range(base, base + n)
        if avoid.intersection(ports):
            continue
        try:
            for port in ports:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError(f"no run of {n} free ports found")


def start_side(name: str, servers: int, work: Path, users: int, opts: argparse.Namespace) -> Side:
    data = work / name
    data.mkdir(parents=True)
    http, login, db, route, msfs, *msg = free_ports(5 + servers)
    # One metrics port per server but login_server and msfs, numbered up from one port.
    metrics = free_run(3 + servers, avoid={http, login, db, route, msfs, *msg})
    redis: RedisProcess | None = None
    if name == "redis":
        # As `imreactor up --redis` starts it, unless --redis-aof says otherwise.
        redis = RedisProcess(
            data / "redis",
            durable=opts.redis_aof != "off",
            appendfsync="no" if opts.redis_aof == "off" else opts.redis_aof,
        )
        redis.start()
    layout = SuiteLayout(
        data_dir=data,
        http_port=http,
        login_port=login,
        msg_ports=msg,
        db_port=db,
        route_ports=[route] if name == "route" else [],
        redis=redis.url if redis is not None else "",
        overrides=UNLIMITED,
        metrics_port=metrics,
        msfs_port=msfs,
    )
    create_users(layout.database_url, [f"load{i}" for i in range(users)], "imreactor")
    try:
        children = layout.start_all()
    except BaseException:
        if redis is not None:
            redis.stop()
        raise
    return Side(name, layout, children, redis)


def redis_command(side: Side, command: str) -> str:
    """An inline command to the side's redis-server, its reply as text (blocking: tooling,
    no loop here). For ``INFO`` and ``CONFIG RESETSTAT``."""
    assert side.redis is not None
    with socket.create_connection(("127.0.0.1", side.redis.port), timeout=5) as s:
        s.sendall(f"{command}\r\n".encode())
        data = s.recv(65536)
        if data.startswith(b"$"):  # a bulk string: its length, then its bytes
            size = int(data[1 : data.index(b"\r\n")])
            head = len(data[: data.index(b"\r\n")]) + 2
            while len(data) < head + size + 2:
                data += s.recv(65536)
            return data[head : head + size].decode()
    return data.decode().strip()


def stop_side(side: Side) -> None:
    stop_children(side.children)
    if side.redis is not None:
        side.redis.stop()


def run_load(side: Side, load: str, args: list[str], opts: argparse.Namespace) -> dict[str, Any]:
    if opts.redis_stats and side.redis is not None:
        redis_command(side, "CONFIG RESETSTAT")
    msg_cpu0 = role_cpu_seconds(side.children, "msg_server")
    fabric0, relayed0 = side.fabric_cpu_s(), side.relayed_out()
    report, cmd = loader(
        ["--msg-servers", side.targets, *args, "--duration", str(opts.duration)],
        opts.duration + 300,
    )
    relayed = side.relayed_out() - relayed0
    report["relayed"] = relayed
    report["fabric_cpu_s"] = side.fabric_cpu_s() - fabric0
    report["msg_cpu_s"] = role_cpu_seconds(side.children, "msg_server") - msg_cpu0
    side.runs.setdefault(load, []).append(report)
    fabric_us = report["fabric_cpu_s"] * 1e6 / relayed if relayed else 0.0
    print(
        f"[{LABELS[side.name]}] {load}: {report['msgs_per_s']:,.0f} msgs/s, "
        f"{report['deliveries_per_s']:,.0f} deliveries/s, delivery p50/p99 "
        f"{ms(report['delivery_latency']['p50_ms'])}/{ms(report['delivery_latency']['p99_ms'])}"
        f" ms, {relayed:,.0f} relayed, fabric CPU {fabric_us:.1f} µs/relayed "
        f"(verified: {report['ok']})\n    $ {cmd}",
        flush=True,
    )
    if opts.redis_stats and side.redis is not None:
        print(redis_command(side, "INFO commandstats"), flush=True)
    return report


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def median(reports: list[dict[str, Any]], get: Any) -> float | None:
    values = [v for v in (get(r) for r in reports) if v is not None]
    return statistics.median(values) if values else None


def table(sides: dict[str, Side], loads: dict[str, list[str]], opts: argparse.Namespace) -> str:
    lines = [
        f"Cluster fabrics: {opts.msg_servers} msg_servers on route_server and on Redis, and 1"
        f" msg_server alone; SQLite, {opts.duration:g} s per run, medians of {opts.reps} "
        f"alternating repetitions, {os.cpu_count()} CPUs",
        "",
        "| load | figure | 1 msg_server | route_server | Redis | Redis / route_server |",
        "|---|---|---:|---:|---:|---:|",
    ]
    figures: list[tuple[str, str, Any]] = [
        ("acked msgs/s", "{:,.0f}", lambda r: r["msgs_per_s"]),
        ("deliveries/s", "{:,.0f}", lambda r: r["deliveries_per_s"]),
        ("ack p50 ms", "{:.1f}", lambda r: r["ack_latency"]["p50_ms"]),
        ("ack p99 ms", "{:.1f}", lambda r: r["ack_latency"]["p99_ms"]),
        ("delivery p50 ms", "{:.1f}", lambda r: r["delivery_latency"]["p50_ms"]),
        ("delivery p99 ms", "{:.1f}", lambda r: r["delivery_latency"]["p99_ms"]),
        (
            "msg_server CPU µs/delivery",
            "{:.1f}",
            lambda r: r["msg_cpu_s"] * 1e6 / max(r["deliveries"], 1),
        ),
        (
            "fabric CPU µs/relayed PDU",
            "{:.1f}",
            lambda r: r["fabric_cpu_s"] * 1e6 / r["relayed"] if r["relayed"] else None,
        ),
    ]
    for load in loads:
        for label, fmt, get in figures:
            values = {s: median(sides[s].runs[load], get) if s in sides else None for s in SIDES}
            cells = ["-" if values[s] is None else fmt.format(values[s]) for s in SIDES]
            route, redis = values["route"], values["redis"]
            ratio = f"{redis / route:.2f}" if route and redis is not None else "-"
            lines.append(f"| {load} | {label} | " + " | ".join(cells) + f" | {ratio} |")
    bad = [
        f"{LABELS[name]} {load}"
        for name, side in sides.items()
        for load, reports in side.runs.items()
        if not all(r["ok"] for r in reports)
    ]
    lines += ["", "verified: " + ("every run" if not bad else "FAILED: " + ", ".join(bad))]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--msg-servers", type=int, default=3, help="of each cluster (default 3)")
    ap.add_argument("--pairs", type=int, default=100, help="1:1 pairs (default 100)")
    ap.add_argument("--in-flight", type=int, default=8, help="per 1:1 sender (default 8)")
    ap.add_argument("--rate", type=float, default=2000, help="1:1 at a rate: msgs/s overall")
    ap.add_argument("--group-size", type=int, default=100, help="group members (default 100)")
    ap.add_argument("--group-senders", type=int, default=1, help="members that send (1)")
    ap.add_argument("--group-in-flight", type=int, default=8, help="per group sender (8)")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per run (10)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    ap.add_argument("--out", type=Path, help="also write every report as JSON lines here")
    ap.add_argument(
        "--sides",
        type=lambda t: tuple(t.split(",")),
        default=SIDES,
        help="which suites to run (default single,route,redis; ratios need route and redis)",
    )
    ap.add_argument(
        "--redis-aof",
        choices=("always", "everysec", "off"),
        default="always",
        help="Redis's append-only file: fsync per write (always, the default, as imreactor up"
        " runs it), once a second, or none",
    )
    ap.add_argument(
        "--redis-stats",
        action="store_true",
        help="print Redis's INFO commandstats after each of its runs (the commands it ran)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the data directories (logs)")
    opts = ap.parse_args()
    if opts.msg_servers < 2:
        ap.error("--msg-servers must be at least 2")
    pairs = ["--users", str(2 * opts.pairs), "--pairs", str(opts.pairs)]
    loads = {
        f"1:1, {opts.pairs} pairs x {opts.in_flight} in flight": [
            *pairs,
            "--in-flight",
            str(opts.in_flight),
        ],
        # One in flight: a conversation's first message waits reorder_wait_s for a
        # predecessor on a cluster (servers/msg/ordering.py), and with more in flight the
        # ones behind it wait too, which would be the p99 of both fabrics.
        f"1:1 at {opts.rate:,.0f} msgs/s": [*pairs, "--in-flight", "1", "--rate", str(opts.rate)],
        f"group of {opts.group_size}, {opts.group_senders} sender(s) x "
        f"{opts.group_in_flight} in flight": [
            "--group-size",
            str(opts.group_size),
            "--senders",
            str(opts.group_senders),
            "--in-flight",
            str(opts.group_in_flight),
        ],
    }
    users = max(2 * opts.pairs, opts.group_size)
    work = Path(tempfile.mkdtemp(prefix="imreactor-fabric-"))
    sides: dict[str, Side] = {}
    try:
        for name in opts.sides:
            started = time.monotonic()
            sides[name] = start_side(
                name, 1 if name == "single" else opts.msg_servers, work, users, opts
            )
            print(f"[{LABELS[name]}] up in {time.monotonic() - started:.1f} s", flush=True)
        for rep in range(opts.reps):
            order = opts.sides[rep % len(opts.sides) :] + opts.sides[: rep % len(opts.sides)]
            for load, args in loads.items():
                for name in order:
                    run_load(sides[name], load, args, opts)
    finally:
        for side in sides.values():
            stop_side(side)
        if opts.keep:
            print(f"data and logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if opts.out:
        with opts.out.open("a") as f:
            for name, side in sides.items():
                for load, reports in side.runs.items():
                    for report in reports:
                        f.write(json.dumps({"side": name, "load": load, "im": report}) + "\n")
    print()
    print(table(sides, loads, opts))
    return 0 if all(r["ok"] for s in sides.values() for rs in s.runs.values() for r in rs) else 1


if __name__ == "__main__":
    sys.exit(main())
