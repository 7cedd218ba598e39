"""Soak: the mixed load against a whole suite for a long time, watching every server for growth.

It starts an ``imreactor up``-like suite on free loopback ports (db_proxy_server, msfs,
login_server, a route_server and ``--msg-servers`` msg_servers, each serving ``/metrics``;
SQLite in a temporary data directory) and runs, all at once, for ``--duration`` seconds:

- **verified 1:1 traffic**: ``imreactor load`` in its own process (``--users`` users, of
  which ``--pairs`` pairs send ``--rate`` messages/s in all, the rest idle and heartbeat);
  every delivery is checked: exactly once, with the acked msg_id, in order;
- **verified group traffic**: a group of ``--group-size`` members, ``--group-senders`` of
  whom send ``--group-rate`` messages/s, checked the same way;
- **login churn**: ``--churn-rate`` logins/s through login_server's ``/msg_server``, each
  sending one message (which must be acked) and logging out.

Every ``--interval`` seconds it samples each server: RSS and open descriptors (from
/proc), the loop lag (the highest ``imreactor_loop_lag_seconds`` bucket that got an
observation since the previous sample, and ``imreactor_loop_max_iteration_seconds``) and
the sum of every ``*_queue_depth`` gauge it exports. Sampling starts once the 1:1 load's
users are all logged in, so the login storm is not taken for growth.

**Growth** (the run fails on it): the samples are split into a first and a second half.
A series grows when both

1. the mean of the second half exceeds the mean of the first by more than its allowance,
   and
2. a least-squares line through the second half alone still rises by more than half the
   allowance across that half (growth that levelled off, a warm-up, passes).

Allowances: RSS ``max(RSS_ALLOWANCE_BYTES, RSS_ALLOWANCE_FRACTION * first-half mean)``
(8 MiB or 10 %); descriptors ``FD_ALLOWANCE`` (16: the churn moves a few); queue depths
``QUEUE_ALLOWANCE`` (500 items). Loop lag is printed, never judged: it measures the
machine as much as the servers.

The run also fails on any verification failure of either load, on a churn login or
message that failed, and on a server that exited. At the end it prints one row per
server (RSS at the first and last sample, descriptors likewise, the worst lag, messages
it counted) and why it failed, if it did; the exit status is 0 only for a clean run.

usage: .venv/bin/python bench/soak.py                        # 30 minutes, a sample every 10 s
       .venv/bin/python bench/soak.py --duration 120 --interval 10   # what CI runs
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from imreactor.accounts import create_users
from imreactor.client import Client
from imreactor.client.load import LoadOptions, LoadReport, run_load
from imreactor.client.load.multi import run_processes
from imreactor.servers.metrics import LATENCY_BUCKETS_S
from imreactor.servers.suite import Child, SuiteLayout, stop_children
from imreactor.storage.passwords import PasswordHasher

PASSWORD = "imreactor"
#: The population's hashes use a cheaper scrypt (stored with each hash): a soak is not a
#: measure of the first login's cost, and 300 users are made in a second.
SCRYPT_N = 2**10
RSS_ALLOWANCE_BYTES = 8 * 2**20
RSS_ALLOWANCE_FRACTION = 0.10
FD_ALLOWANCE = 16
QUEUE_ALLOWANCE = 500
#: The churn users: logged in and out in turn, each with one message to the next.
CHURN_USERS = 8


@dataclass
class Sample:
    """One server at one moment."""

    t: float
    rss: int
    fds: int
    lag_s: float  # upper bound of the highest lag bucket observed since the last sample
    max_iteration_s: float
    queue: float
    counters: dict[str, float]


@dataclass
class Watched:
    """A server being sampled: its process, its /metrics and what was read."""

    name: str
    child: Child
    metrics_url: str
    samples: list[Sample] = field(default_factory=list)
    _lag_buckets: dict[float, float] = field(default_factory=dict)

    def sample(self, t: float) -> Sample:
        pid = self.child.proc.pid
        families = scrape(self.metrics_url)
        buckets = {
            float(s.labels["le"]): s.value
            for f in families
            if f.name == "imreactor_loop_lag_seconds"
            for s in f.samples
            if s.name.endswith("_bucket")
        }
        lag = lag_since(self._lag_buckets, buckets)
        self._lag_buckets = buckets
        gauges = {
            (s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples
        }
        queue = sum(v for (name, _), v in gauges.items() if name.endswith("_queue_depth"))
        worst = gauges.get(("imreactor_loop_max_iteration_seconds", ()), 0.0)
        counters = {
            "stored": gauges.get(("imreactor_msg_messages_total", (("outcome", "stored"),)), 0.0),
            "committed": gauges.get(("imreactor_db_messages_stored_total", ()), 0.0),
            "relayed": gauges.get(("imreactor_route_relayed_total", ()), 0.0),
        }
        sample = Sample(t, rss_bytes(pid), open_fds(pid), lag, worst, queue, counters)
        self.samples.append(sample)
        return sample


def scrape(url: str) -> list[Any]:
    with urllib.request.urlopen(url, timeout=10) as rsp:
        return list(text_string_to_metric_families(rsp.read().decode()))


def lag_since(before: dict[float, float], now: dict[float, float]) -> float:
    """The upper bound of the highest lag bucket that got an observation between two
    scrapes (cumulative ``le`` counts); ``inf`` past the last bound, 0 with none."""
    highest = 0.0
    previous_delta = 0.0
    for bound in sorted(now):
        delta = now[bound] - before.get(bound, 0.0)
        if delta > previous_delta:  # cumulative: this bucket itself got some
            highest = bound
        previous_delta = delta
    return highest


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of ``(t, value)`` points (0 for fewer than two)."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    return sum((t - mt) * (v - mv) for t, v in points) / var


def growth(points: Sequence[tuple[float, float]], allowance: float) -> str | None:
    """Why ``points`` grow (the rule in the module docstring), or None if they do not."""
    if len(points) < 4:
        return None
    half = len(points) // 2
    first, second = points[:half], points[len(points) - half :]
    mean1 = sum(v for _, v in first) / len(first)
    mean2 = sum(v for _, v in second) / len(second)
    rise = slope(second) * (second[-1][0] - second[0][0])
    if mean2 - mean1 > allowance and rise > allowance / 2:
        return (
            f"second-half mean {mean2:,.0f} vs first {mean1:,.0f} (allowed +{allowance:,.0f}),"
            f" still rising {rise:,.0f} across the second half"
        )
    return None


def judge(watched: Sequence[Watched]) -> list[str]:
    """Every growth found, one line each."""
    found = []
    for w in watched:
        rss = [(s.t, float(s.rss)) for s in w.samples]
        first_mean = sum(v for _, v in rss[: max(1, len(rss) // 2)]) / max(1, len(rss) // 2)
        checks: list[tuple[str, list[tuple[float, float]], float]] = [
            ("RSS", rss, max(RSS_ALLOWANCE_BYTES, RSS_ALLOWANCE_FRACTION * first_mean)),
            ("open fds", [(s.t, float(s.fds)) for s in w.samples], FD_ALLOWANCE),
            ("queue depth", [(s.t, s.queue) for s in w.samples], QUEUE_ALLOWANCE),
        ]
        for what, points, allowance in checks:
            why = growth(points, allowance)
            if why is not None:
                found.append(f"{w.name} {what} grows: {why}")
    return found


def free_port_run(n: int) -> int:
    """A port p with p..p+n-1 free on 127.0.0.1, below the ephemeral range."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 30000 - n)
        socks: list[socket.socket] = []
        try:
            for port in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        return base
    raise RuntimeError(f"no run of {n} free ports found")


def layout_for(data: Path, msg_servers: int) -> SuiteLayout:
    """A suite like ``imreactor up --msg-servers N`` on free ports (a run of them)."""
    # http, login, db, route, msfs, msg_servers..., then /metrics of db, route, msgs.
    metrics = 1 + 1 + msg_servers
    base = free_port_run(5 + msg_servers + metrics)
    http, login, db, route, msfs = range(base, base + 5)
    msgs = list(range(base + 5, base + 5 + msg_servers))
    return SuiteLayout(
        data_dir=data,
        http_port=http,
        login_port=login,
        msg_ports=msgs,
        db_port=db,
        route_ports=[route] if msg_servers > 1 else [],
        database=f"sqlite:///{data / 'imreactor.db'}",
        msfs_port=msfs,
        metrics_port=base + 5 + msg_servers,
    )


class Churn:
    """Logins and logouts through login_server at a steady rate, each with one message."""

    def __init__(self, login_url: str, rate: float, stop: threading.Event) -> None:
        self.login_url = login_url
        self.rate = rate
        self.stop = stop
        self.logins = 0
        self.acked = 0
        self.failures: list[str] = []
        self._ids: dict[str, int] = {}
        self.thread = threading.Thread(target=self._run, name="churn", daemon=True)

    def _run(self) -> None:
        i = 0
        next_at = time.monotonic()
        while not self.stop.is_set():
            name, peer = f"soakc{i % CHURN_USERS}", f"soakc{(i + 1) % CHURN_USERS}"
            i += 1
            try:
                with Client.via_login_server(self.login_url) as c:
                    c.login(name, PASSWORD, check=True)
                    self.logins += 1
                    ack = c.send_text(self.peer_id(c, peer), f"churn {i}")
                    if ack.msg_id == 0:
                        raise RuntimeError("acked with msg_id 0")
                    self.acked += 1
            except Exception as exc:  # every failure is reported, none ends the run
                if len(self.failures) < 20:
                    self.failures.append(f"churn login {i} as {name}: {exc!r}")
                else:
                    self.failures[-1:] = [f"... and more (last: {exc!r})"]
            next_at += 1.0 / self.rate
            self.stop.wait(max(0.0, next_at - time.monotonic()))

    def peer_id(self, c: Client, name: str) -> int:
        """The user id of ``name`` (the churn users' nicks are their names)."""
        if not self._ids:
            for u in c.all_users().user_list:
                self._ids[u.user_nick_name] = u.user_id
        return self._ids[name]


def run(opts: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    data = work / "data"
    data.mkdir()
    layout = layout_for(data, opts.msg_servers)
    cheap = PasswordHasher(n=SCRYPT_N)
    made = create_users(
        layout.database_url,
        [f"soak{i}" for i in range(opts.users)]
        + [f"soakg{i}" for i in range(opts.group_size)]
        + [f"soakc{i}" for i in range(CHURN_USERS)],
        PASSWORD,
        hasher=cheap,
    )
    print(f"soak: {len(made)} users in {data}", flush=True)
    children = layout.start_all()
    urls = layout.metrics_urls()
    watched = [Watched(c.name, c, urls[c.name]) for c in children]
    login_url = f"http://127.0.0.1:{layout.http_port}"
    stop = threading.Event()
    ready = threading.Event()
    reports: dict[str, LoadReport] = {}
    crashes: list[str] = []

    def guarded(name: str, fn: Callable[[], LoadReport]) -> Callable[[], None]:
        def body() -> None:
            try:
                reports[name] = fn()
            except Exception as exc:
                crashes.append(f"{name} load raised {exc!r}")
            finally:
                ready.set()  # never wait for a load that failed before it was ready

        return body

    pairs = LoadOptions(
        login_url=login_url,
        users=opts.users,
        pairs=opts.pairs,
        rate=opts.rate,
        duration_s=opts.duration,
        user_prefix="soak",
        login_timeout_s=60,
        drain_s=10,
    )
    group = LoadOptions(
        login_url=login_url,
        group_size=opts.group_size,
        senders=opts.group_senders,
        rate=opts.group_rate,
        duration_s=opts.duration,
        user_prefix="soakg",
        login_timeout_s=60,
        drain_s=10,
    )
    loads = [
        threading.Thread(
            target=guarded("1:1", lambda: run_processes(pairs, 1, on_ready=ready.set)),
            name="pairs",
        ),
        threading.Thread(target=guarded("group", lambda: run_load(group)), name="group"),
    ]
    churn = Churn(login_url, opts.churn_rate, stop)
    exited: list[str] = []
    try:
        for t in loads:
            t.start()
        if not ready.wait(120):
            crashes.append("the 1:1 load's users did not log in within 120 s")
        churn.thread.start()
        t0 = time.monotonic()
        end = t0 + opts.duration
        next_sample = t0
        while True:
            now = time.monotonic()
            for w in watched:
                if w.child.proc.poll() is not None:
                    exited.append(f"{w.name} exited with {w.child.proc.returncode}")
            if exited:
                break
            for w in watched:
                w.sample(now - t0)
            print(progress(watched, now - t0, churn), file=sys.stderr, flush=True)
            next_sample += opts.interval
            if next_sample > end:
                break
            time.sleep(max(0.0, next_sample - time.monotonic()))
        stop.set()
        churn.thread.join(30)
        for t in loads:
            t.join(opts.duration + 180)
    finally:
        stop.set()
        stop_children(children)
    problems = [*exited, *crashes, *judge(watched), *churn.failures]
    for name, report in reports.items():
        if not report.ok:
            problems.append(f"{name} load verification failed:\n{report.text()}")
    for name in ("1:1", "group"):
        if name not in reports and not crashes:
            problems.append(f"the {name} load reported nothing")
    print()
    print(table(watched, reports, churn, opts))
    if problems:
        print("\nsoak: FAILED")
        for p in problems:
            print(f"  - {p}")
        print(f"(logs kept in {data})")
        return 1
    print("\nsoak: OK (no growth, every message verified)")
    shutil.rmtree(work, ignore_errors=True)
    return 0


def progress(watched: Sequence[Watched], t: float, churn: Churn) -> str:
    parts = [f"{w.name} {w.samples[-1].rss / 2**20:.0f}M/{w.samples[-1].fds}fd" for w in watched]
    return f"[{t:6.0f} s] " + "  ".join(parts) + f"  churn {churn.logins}"


def table(
    watched: Sequence[Watched], reports: dict[str, LoadReport], churn: Churn, opts: Any
) -> str:
    """Per server: RSS and fds at the first and last sample, worst lag, messages counted."""
    lines = [
        "| server | RSS start MiB | RSS end MiB | fds start | fds end | max lag s"
        " | max iteration s | max queue | messages |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for w in watched:
        if not w.samples:
            lines.append(f"| {w.name} | - | - | - | - | - | - | - | - |")
            continue
        first, last = w.samples[0], w.samples[-1]
        counted = max(
            (last.counters[k] - first.counters[k], k) for k in ("stored", "committed", "relayed")
        )
        messages = f"{counted[0]:,.0f} {counted[1]}" if counted[0] else "-"
        lag = max(s.lag_s for s in w.samples)
        lines.append(
            f"| {w.name} | {first.rss / 2**20:.1f} | {last.rss / 2**20:.1f} | {first.fds}"
            f" | {last.fds} | {f'>{LATENCY_BUCKETS_S[-1]:g}' if math.isinf(lag) else f'{lag:g}'}"
            f" | {max(s.max_iteration_s for s in w.samples):.3f}"
            f" | {max(s.queue for s in w.samples):.0f} | {messages} |"
        )
    samples = max((len(w.samples) for w in watched), default=0)
    lines.append("")
    lines.append(
        f"{opts.duration:g} s, {samples} samples every {opts.interval:g} s;"
        f" churn: {churn.logins} logins, {churn.acked} messages acked"
    )
    for name, report in reports.items():
        lines.append(
            f"{name} load: {report.acked:,} acked, {report.deliveries:,} of"
            f" {report.expected_deliveries:,} deliveries verified,"
            f" {'OK' if report.ok else 'FAILED'}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=1800.0, help="seconds (default 30 min)")
    ap.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    ap.add_argument("--msg-servers", type=int, default=2, help="msg_servers (2: with route)")
    ap.add_argument("--users", type=int, default=300, help="1:1 load users (the rest idle)")
    ap.add_argument("--pairs", type=int, default=20, help="sending pairs of the 1:1 load")
    ap.add_argument("--rate", type=float, default=100.0, help="1:1 messages/s in all")
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--group-senders", type=int, default=2)
    ap.add_argument("--group-rate", type=float, default=10.0, help="group messages/s in all")
    ap.add_argument("--churn-rate", type=float, default=2.0, help="logins/s with logout")
    opts = ap.parse_args(argv)
    if opts.interval <= 0 or opts.duration < 4 * opts.interval:
        ap.error("--duration must hold at least 4 samples (--interval each)")
    return run(opts)


if __name__ == "__main__":
    sys.exit(main())
