"""Scale benchmark: N online users over 3 msg_servers, verified 1:1 traffic, the rest idle.

For each size N (``--sizes``, default 5,000 / 20,000 / 50,000) it starts a fresh SQLite
suite (db_proxy_server, login_server, a route_server and ``--msg-servers`` (3)
msg_servers, per-connection rate limits lifted) on a copy of a prepared database, and:

1. **cold logins**: ``--cold`` (400) users whose hashes use the default scrypt cost log
   in at once, from one load process: every login is a full password check.
2. **first storm**: the N users ``scale0..`` log in through login_server from
   ``--processes`` load processes (default: one per 12,500 users, at least 2), each on
   its own loopback source address, then log out. Their hashes use a cheaper scrypt
   (stored with each hash) so that preparing 50,000 users takes a minute, not 20: this
   storm's duration is printed but is not a figure of the default cost. It leaves every
   credential in db_proxy's cache.
3. **main run**: the same N users log in again (returning logins: the storm after a
   restart), and once every one is online, ``--pairs`` (1,000) pairs send ``--rate``
   (1,700) verified 1:1 messages/s for ``--duration`` (60) s while everyone else idles
   and heartbeats. msg_server memory is read (RSS from /proc) with everyone online
   before the first message; server CPU from /proc over the sending window.

Printed per size: cold and returning logins/s, the storms' durations, bytes of
msg_server RSS per online user (RSS with everyone online minus RSS once the same users
had been online and logged out, over the users; and apart, what the allocator kept
after that first storm over RSS at start), msg_server (and route_server, db_proxy)
CPU per acked message, ack and delivery p50/p99, the verification, then how each
figure grows from the smallest size to each larger one (the ratio, in this run: the
machine is noisy, the ratios less so).

The prepared database (users only) is kept in ``--work`` (default ``bench/.cache``) and
reused by later runs. Every server and load process shares this machine's cores.

usage: .venv/bin/python bench/scale.py [--sizes 5000,20000,50000] [--duration 60]
       .venv/bin/python bench/scale.py --sizes 5000 --duration 10      # a quick look
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from imreactor.accounts import create_users
from imreactor.client.load import LoadOptions, LoadReport, run_load
from imreactor.client.load.multi import run_processes
from imreactor.servers.suite import Child, SuiteLayout, stop_children
from imreactor.storage.passwords import PasswordHasher

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from im_e2e import free_ports, role_cpu_seconds  # noqa: E402
from proc_cpu import cpu_seconds  # noqa: E402

PASSWORD = "imreactor"
#: The cheaper scrypt cost of the population's hashes (the default is 2**14).
POPULATION_SCRYPT_N = 2**10
USERS_PER_PROCESS = 12_500
OVERRIDES: dict[str, dict[str, Any]] = {"msg": {"msg_rate_per_s": 1e9, "msg_burst": 1_000_000_000}}


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (``VmRSS`` in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def prepare(work: Path, population: int, cold: int) -> Path:
    """The template database with ``scale0..`` (cheap hashes) and ``cold0..`` users."""
    work.mkdir(parents=True, exist_ok=True)
    db = work / f"scale-{population}-{cold}.db"
    if db.exists():
        return db
    partial = db.with_suffix(".partial.db")
    url = f"sqlite:///{partial}"
    started = time.monotonic()
    cheap = PasswordHasher(n=POPULATION_SCRYPT_N)
    made = len(create_users(url, [f"scale{i}" for i in range(population)], PASSWORD, hasher=cheap))
    made += len(create_users(url, [f"cold{i}" for i in range(cold)], PASSWORD))
    print(f"prepared {made} users in {time.monotonic() - started:.0f} s: {db}", flush=True)
    copy_database(partial, db)
    for leftover in partial.parent.glob(partial.name + "*"):
        leftover.unlink()
    return db


def copy_database(src: Path, dst: Path) -> None:
    """A consistent copy of a SQLite database (WAL included)."""
    with sqlite3.connect(src) as source, sqlite3.connect(dst) as target:
        source.backup(target)
    source.close()
    target.close()


def processes_for(users: int, asked: int | None) -> int:
    return asked or max(2, math.ceil(users / USERS_PER_PROCESS))


def msg_children(children: list[Child]) -> list[Child]:
    return [c for c in children if c.name.startswith("msg_server")]


def run_size(size: int, template: Path, opts: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One size: fresh suite, cold logins, first storm, main run. The figures."""
    data = work / f"run-{size}"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    db = data / "imreactor.db"
    copy_database(template, db)
    http, login, dbp, route, *msgs = free_ports(4 + opts.msg_servers)
    layout = SuiteLayout(
        data_dir=data,
        http_port=http,
        login_port=login,
        msg_ports=msgs,
        db_port=dbp,
        route_ports=[route],
        database=f"sqlite:///{db}",
        overrides=OVERRIDES,
    )
    children = layout.start_all()
    url = f"http://127.0.0.1:{http}"
    procs = processes_for(size, opts.processes)
    out: dict[str, Any] = {"size": size, "processes": procs}
    try:
        base_rss = {c.name: rss_bytes(c.proc.pid) for c in msg_children(children)}
        cold = run_load(
            LoadOptions(
                login_url=url,
                users=opts.cold,
                pairs=1,
                count=1,
                user_prefix="cold",
                login_concurrency=opts.cold,
                login_timeout_s=60,
                login_retry_s=600,
            )
        )
        out["cold"] = cold
        print(f"[{size}] cold logins: {cold.logins_per_s:,.0f}/s ({cold.text().splitlines()[1]})")
        storm = LoadOptions(
            login_url=url,
            users=size,
            pairs=procs,
            count=procs,
            user_prefix="scale",
            login_concurrency=opts.login_concurrency,
            login_timeout_s=60,
            login_retry_s=900,
        )
        first = run_processes(storm, procs, progress=sys.stderr)
        out["first"] = first
        print(f"[{size}] first storm: {first.login_s:.1f} s ({first.logins_per_s:,.0f}/s)")
        time.sleep(2)  # the servers finish the logouts
        offline_rss = {c.name: rss_bytes(c.proc.pid) for c in msg_children(children)}
        marks: dict[str, Any] = {}

        victim = msg_children(children)[0]

        def kill_victim() -> None:
            marks["cpu_victim"] = sum(cpu_seconds(victim.proc.pid))
            victim.proc.kill()
            victim.proc.wait()
            print(f"[{size}] killed {victim.name} (SIGKILL)", file=sys.stderr, flush=True)
            if opts.restart_after is not None:
                marks["restarter"] = threading.Timer(opts.restart_after, restart_victim)
                marks["restarter"].start()

        def restart_victim() -> None:
            children[children.index(victim)] = layout.start(victim.name)
            print(f"[{size}] restarted {victim.name}", file=sys.stderr, flush=True)

        def on_ready() -> None:
            marks["rss"] = {c.name: rss_bytes(c.proc.pid) for c in msg_children(children)}
            marks["cpu0"] = cpu_by_role(children)
            marks["t0"] = time.monotonic()
            if opts.kill_after is not None:
                marks["killer"] = threading.Timer(opts.kill_after, kill_victim)
                marks["killer"].start()

        def on_done() -> None:
            for timer in ("killer", "restarter"):
                if timer in marks:
                    marks[timer].cancel()
            marks["cpu1"] = cpu_by_role(children, marks.get("cpu_victim"), victim)
            marks["t1"] = time.monotonic()

        main = run_processes(
            LoadOptions(
                login_url=url,
                users=size,
                pairs=min(opts.pairs, size // 2),
                rate=opts.rate,
                duration_s=opts.duration,
                in_flight=opts.in_flight,
                user_prefix="scale",
                login_concurrency=opts.login_concurrency,
                login_timeout_s=60,
                login_retry_s=900,
                drain_s=10,
                reconnect=opts.kill_after is not None,
                reconnect_jitter_s=opts.reconnect_jitter,
            ),
            procs,
            progress=sys.stderr,
            on_ready=on_ready,
            on_done=on_done,
        )
        out["main"] = main
        # What an online user costs: RSS with everyone online minus RSS after the same
        # users were online once and logged out (the allocator keeps what a storm's
        # peak took; that one-off growth is printed on its own).
        grown = sum(marks["rss"][n] - offline_rss[n] for n in base_rss)
        out["bytes_per_user"] = grown / size
        out["kept_after_storm_per_user"] = (
            sum(offline_rss[n] - base_rss[n] for n in base_rss) / size
        )
        out["rss_mib"] = {n: round(v / 2**20, 1) for n, v in marks["rss"].items()}
        acked = max(main.acked, 1)
        out["cpu_us_per_msg"] = {
            role: (marks["cpu1"][role] - marks["cpu0"][role]) / acked * 1e6
            for role in marks["cpu0"]
        }
        out["window_s"] = marks["t1"] - marks["t0"]
        print(f"[{size}] main run:\n{main.text()}", flush=True)
    finally:
        stop_children(children)
    if not opts.keep:
        shutil.rmtree(data, ignore_errors=True)
    return out


def cpu_by_role(
    children: list[Child], victim_cpu: float | None = None, victim: Child | None = None
) -> dict[str, float]:
    """CPU seconds so far per role; a killed ``victim`` counts what it had used then."""
    alive = [c for c in children if c is not victim or victim_cpu is None]
    cpu = {
        role: role_cpu_seconds(alive, role)
        for role in ("msg_server", "route_server", "db_proxy_server", "login_server")
    }
    if victim is not None and victim_cpu is not None:
        cpu["msg_server"] += victim_cpu
    return cpu


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def table(results: list[dict[str, Any]]) -> str:
    """Figures per size, then the growth of each from the first size."""
    rows: list[tuple[str, list[float | None], str]] = []

    def row(label: str, fmt: str, get: Any) -> None:
        values = [get(r) for r in results]
        rows.append((label, values, fmt))

    def report(r: dict[str, Any], key: str) -> LoadReport:
        value: LoadReport = r[key]
        return value

    row("cold logins/s (full scrypt)", "{:,.0f}", lambda r: report(r, "cold").logins_per_s)
    row("first storm s (cheap scrypt)", "{:.1f}", lambda r: report(r, "first").login_s)
    row("returning storm s", "{:.1f}", lambda r: report(r, "main").login_s)
    row("returning logins/s", "{:,.0f}", lambda r: report(r, "main").logins_per_s)
    row("msg_server bytes per online user", "{:,.0f}", lambda r: r["bytes_per_user"])
    row(
        "  kept after a storm, per user",
        "{:,.0f}",
        lambda r: r["kept_after_storm_per_user"],
    )
    row("acked msgs/s", "{:,.0f}", lambda r: report(r, "main").msgs_per_s)
    row("msg_server CPU µs per msg", "{:.0f}", lambda r: r["cpu_us_per_msg"]["msg_server"])
    row("route_server CPU µs per msg", "{:.0f}", lambda r: r["cpu_us_per_msg"]["route_server"])
    row("db_proxy CPU µs per msg", "{:.0f}", lambda r: r["cpu_us_per_msg"]["db_proxy_server"])
    row("reconnects", "{:,.0f}", lambda r: report(r, "main").reconnects)
    row("all back and caught up within s", "{:.1f}", lambda r: report(r, "main").back_max_s)
    row("ack p50 ms", "{:.1f}", lambda r: report(r, "main").ack_latency.p50_ms)
    row("ack p99 ms", "{:.1f}", lambda r: report(r, "main").ack_latency.p99_ms)
    row("delivery p50 ms", "{:.1f}", lambda r: report(r, "main").delivery_latency.p50_ms)
    row("delivery p99 ms", "{:.1f}", lambda r: report(r, "main").delivery_latency.p99_ms)
    sizes = [f"{r['size']:,}" for r in results]
    growth = [f"{s} / {sizes[0]}" for s in sizes[1:]]
    head = "| figure | " + " | ".join(sizes + growth) + " |"
    lines = [head, "|" + "---|" * (1 + len(sizes) + len(growth))]
    for label, values, fmt in rows:
        cells = ["-" if v is None else fmt.format(v) for v in values]
        first = values[0]
        for v in values[1:]:
            cells.append("-" if v is None or not first else f"{v / first:.2f}x")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    verified = []
    for r in results:
        main = report(r, "main")
        ok = main.ok and report(r, "cold").ok and report(r, "first").ok
        verified.append(
            f"{r['size']:,}: {'OK' if ok else 'FAILED'} ({main.acked:,} acked, "
            f"{main.deliveries:,}/{main.expected_deliveries:,} deliveries verified, "
            f"{r['processes']} load processes, msg_server RSS {r['rss_mib']} MiB)"
        )
    return "\n".join(lines) + "\n\nverification: " + "; ".join(verified)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--sizes",
        type=lambda t: [int(x) for x in t.split(",")],
        default=[5000, 20000, 50000],
        help="online users per run (default 5000,20000,50000)",
    )
    ap.add_argument("--msg-servers", type=int, default=3)
    ap.add_argument("--rate", type=float, default=1700.0, help="verified messages/s overall")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of traffic")
    ap.add_argument("--pairs", type=int, default=1000, help="sending pairs (the rest idle)")
    ap.add_argument("--in-flight", type=int, default=4, help="unacked messages per sender")
    ap.add_argument("--cold", type=int, default=400, help="users for the cold-login figure")
    ap.add_argument("--processes", type=int, default=None, help="load processes (default auto)")
    ap.add_argument("--login-concurrency", type=int, default=1000, help="per load process")
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / ".cache")
    ap.add_argument("--keep", action="store_true", help="keep each run's data dir and logs")
    ap.add_argument(
        "--kill-after",
        type=float,
        default=None,
        metavar="S",
        help="reconnect storm: S seconds into the traffic, SIGKILL the first msg_server; its "
        "clients reconnect (through login_server) and catch up, and every acked message "
        "must still arrive",
    )
    ap.add_argument(
        "--restart-after",
        type=float,
        default=None,
        metavar="S",
        help="with --kill-after: start the killed msg_server again S seconds later (with"
        " 50,000 users the two others cannot hold them all: 20,000 open files each)",
    )
    ap.add_argument("--reconnect-jitter", type=float, default=5.0, help="with --kill-after")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    opts = ap.parse_args()
    template = prepare(opts.work, max(opts.sizes), opts.cold)
    work = Path(tempfile.mkdtemp(prefix="scale-", dir=opts.work))
    results = []
    try:
        for size in opts.sizes:
            results.append(run_size(size, template, opts, work))
    finally:
        if not opts.keep:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(table(results))
    if opts.json is not None:
        plain = [
            {k: (v.to_json() if isinstance(v, LoadReport) else v) for k, v in r.items()}
            for r in results
        ]
        opts.json.write_text(json.dumps(plain, indent=2))
    ok = all(r["main"].ok and r["cold"].ok and r["first"].ok for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
