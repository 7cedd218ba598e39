"""Fault scenarios under the verifying load generator: the reliability table.

Each scenario starts a fresh SQLite suite (db_proxy_server, login_server, a route_server
and two msg_servers unless it says otherwise, per-connection rate limits lifted) in a
temporary directory, runs ``imreactor load`` against it (1:1 pairs, ``--reconnect``: a
dropped connection logs in again with jitter and catches up from history), and injects
its fault a third of the way into the sending (once every user is logged in). The fault
proxy (``tests/faultproxy.py``) sits where a scenario needs one: between the clients and
a msg_server, or between the msg_servers and db_proxy_server or route_server.

Printed per scenario (and as JSON with ``--json``):

- **acked**: messages the servers acknowledged; **lost**, **dup**, **reordered**: acked
  messages missing at a connection that should have them, extra copies, arrivals after a
  later msg_id of their conversation (all three must be 0);
- **unanswered**: messages that got neither an ack within the load's ack timeout nor a
  closed connection (must be 0: a client always hears something);
- **recover s**: the longest wait of the run: a dropped connection until it was back and
  caught up, an acked message until its ack, or a live delivery from send to arrival (a
  stalled link shows here);
- **peak MB**: the largest RSS the suite's servers reached together;
- **verdict**: the load generator's verification (``OK`` or what failed).

    .venv/bin/python bench/faults.py                       # every scenario, 30 s each
    .venv/bin/python bench/faults.py --scenarios partition-db,kill-msg --duration 12
    .venv/bin/python bench/faults.py --list
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imreactor.accounts import create_users
from imreactor.client.load import LoadOptions, LoadReport
from imreactor.client.load.cli import execute
from imreactor.client.load.driver import LoadRun
from imreactor.redis import RedisProcess
from imreactor.servers.suite import Child, SuiteLayout, stop_children

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests"))
from faultproxy import FaultProxy  # noqa: E402
from im_e2e import free_ports  # noqa: E402
from pg import PostgresServer  # noqa: E402

PASSWORD = "imreactor"
UNLIMITED = {"msg_rate_per_s": 100000.0, "msg_burst": 100000}


@dataclass
class Run:
    """One scenario's suite while it runs: its layout, children, proxies, load options."""

    layout: SuiteLayout
    children: list[Child]
    options: LoadOptions
    proxies: dict[str, FaultProxy] = field(default_factory=dict)
    postgres: PostgresServer | None = None
    redis: RedisProcess | None = None
    peak_rss = 0

    def child(self, name: str) -> Child:
        return next(c for c in self.children if c.name == name)

    def kill(self, name: str) -> None:
        """SIGKILL: no drain, no goodbye, as a crash or an OOM kill."""
        child = self.child(name)
        child.proc.send_signal(signal.SIGKILL)
        child.proc.wait()

    def restart(self, name: str) -> None:
        old = self.child(name)
        if old.log_file is not None:
            old.log_file.close()
        self.children[self.children.index(old)] = self.layout.start(name)

    def rss(self) -> int:
        total = 0
        for child in self.children:
            try:
                with open(f"/proc/{child.proc.pid}/statm") as f:
                    total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            except (OSError, ValueError):
                pass  # between a kill and a restart
        return total


@dataclass(frozen=True)
class Scenario:
    """``inject(run, fault_s)`` does the fault and undoes it (sleeping as it needs)."""

    name: str
    about: str
    inject: Callable[[Run, float], None]
    msg_servers: int = 2
    client_proxy: bool = False  # clients reach the msg_servers through proxies
    link_proxy: str = ""  # "db" or "route": the msg_servers reach it through one proxy
    client_faults: dict[str, Any] = field(default_factory=dict)  # for the whole run
    postgres: bool = False  # a private PostgreSQL instead of SQLite
    redis: bool = False  # the Redis fabric (a private redis-server) instead of route_server


def kill_and_restart(name: str) -> Callable[[Run, float], None]:
    def inject(run: Run, fault_s: float) -> None:
        run.kill(name)
        time.sleep(fault_s)
        run.restart(name)

    return inject


def partition(which: str) -> Callable[[Run, float], None]:
    def inject(run: Run, fault_s: float) -> None:
        proxy = run.proxies[which]
        proxy.partition()
        time.sleep(fault_s)
        proxy.heal()

    return inject


def stop_postgres(run: Run, fault_s: float) -> None:
    assert run.postgres is not None
    run.postgres.stop()
    time.sleep(fault_s)
    run.postgres.start()


def kill_redis(run: Run, fault_s: float) -> None:
    assert run.redis is not None
    run.redis.kill()
    time.sleep(fault_s)
    run.redis.start()


def drop_every_client(run: Run, fault_s: float) -> None:
    for proxy in run.proxies.values():
        proxy.reset()


def nothing(run: Run, fault_s: float) -> None:
    """The faults are the client proxies' for the whole run."""


SCENARIOS = {
    s.name: s
    for s in [
        Scenario("baseline", "no fault: the same load, for comparison", nothing),
        Scenario("kill-msg", "kill -9 of a msg_server; restarted", kill_and_restart("msg_server1")),
        Scenario(
            "restart-msg",
            "one msg_server holding every client killed and restarted: all reconnect at once",
            kill_and_restart("msg_server"),
            msg_servers=1,
        ),
        Scenario(
            "kill-db", "kill -9 of db_proxy_server; restarted", kill_and_restart("db_proxy_server")
        ),
        Scenario(
            "kill-route", "kill -9 of route_server; restarted", kill_and_restart("route_server")
        ),
        Scenario(
            "kill-login", "kill -9 of login_server; restarted", kill_and_restart("login_server")
        ),
        Scenario(
            "kill-redis",
            "kill -9 of the Redis the msg_servers relay through; restarted",
            kill_redis,
            redis=True,
        ),
        Scenario(
            "postgres-stop",
            "PostgreSQL stopped, then started again",
            stop_postgres,
            postgres=True,
        ),
        Scenario(
            "partition-db",
            "the msg_servers' link to db_proxy_server black-holed, then healed",
            partition("db"),
            link_proxy="db",
        ),
        Scenario(
            "partition-route",
            "the msg_servers' link to route_server black-holed, then healed",
            partition("route"),
            link_proxy="route",
        ),
        Scenario(
            "drop-all",
            "every client connection reset at once; all reconnect with jitter",
            drop_every_client,
            client_proxy=True,
        ),
        Scenario(
            "slice-latency",
            "clients' bytes sliced into 1-byte writes, 20 ± 10 ms each way",
            nothing,
            client_proxy=True,
            client_faults={"latency_s": 0.02, "jitter_s": 0.01, "slice": True},
        ),
    ]
}


@contextmanager
def started(
    scenario: Scenario, work: Path, users: int, rate: float, duration_s: float, fault_s: float
) -> Iterator[Run]:
    """The scenario's suite, proxies and load options; everything stopped after."""
    with ExitStack() as stack:
        http, login, db, route, msfs, *msg = free_ports(5 + scenario.msg_servers)
        overrides: dict[str, dict[str, Any]] = {"msg": dict(UNLIMITED)}
        proxies: dict[str, FaultProxy] = {}
        postgres = redis = None
        database = redis_url = ""
        if scenario.postgres:
            postgres = stack.enter_context(PostgresServer())
            database = postgres.create_database()
        if scenario.redis:
            redis = stack.enter_context(RedisProcess(work / "redis"))
            redis_url = redis.url
        if scenario.link_proxy:
            target = db if scenario.link_proxy == "db" else route
            proxy = stack.enter_context(FaultProxy(("127.0.0.1", target)))
            proxies[scenario.link_proxy] = proxy
            key = "db_proxies" if scenario.link_proxy == "db" else "route_servers"
            overrides["msg"][key] = [f"127.0.0.1:{proxy.port}"]
        layout = SuiteLayout(
            data_dir=work,
            http_port=http,
            login_port=login,
            msg_ports=msg,
            db_port=db,
            route_ports=[route] if scenario.msg_servers > 1 and not redis_url else [],
            msfs_port=msfs,
            overrides=overrides,
            database=database,
            redis=redis_url,
        )
        work.mkdir(parents=True, exist_ok=True)
        create_users(layout.database_url, [f"load{i}" for i in range(users)], PASSWORD)
        children = layout.start_all()
        run = Run(layout, children, LoadOptions(), postgres=postgres, redis=redis)
        stack.callback(lambda: stop_children(run.children))
        # Users are pinned (user i to msg_server i mod n), so each pair is split across two
        # msg_servers and every message crosses the fabric: login_server would put users
        # that log in together on one, the least loaded when they asked.
        direct = [f"127.0.0.1:{port}" for port in msg] if len(msg) > 1 else None
        if scenario.client_proxy:
            direct = []
            for i, port in enumerate(msg):
                proxy = stack.enter_context(FaultProxy(("127.0.0.1", port)))
                if scenario.client_faults:
                    proxy.set(**scenario.client_faults)
                proxies[f"client{i}"] = proxy
                direct.append(f"127.0.0.1:{proxy.port}")
        run.proxies = proxies
        run.options = LoadOptions(
            login_url=f"http://127.0.0.1:{http}",
            msg_servers=direct,
            users=users,
            rate=rate,
            in_flight=2,
            duration_s=duration_s,
            reconnect=True,
            reconnect_jitter_s=1.0,
            login_retry_s=fault_s + 30.0,
            # A stalled link holds acks as long as the fault lasts: only an ack that never
            # comes, or comes after the fault is long over, counts as unanswered.
            ack_timeout_s=fault_s + 20.0,
            drain_s=fault_s + 10.0,
        )
        yield run


def run_scenario(
    scenario: Scenario,
    *,
    users: int = 40,
    rate: float = 400.0,
    duration_s: float = 30.0,
    fault_s: float = 10.0,
    keep: Path | None = None,
) -> dict[str, Any]:
    """Run one scenario; its row of the table (see the module docstring). ``keep``: the
    suite's data directory goes under it and stays (logs, database), else a temporary one."""
    with ExitStack() as stack:
        if keep is None:
            keep = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="faults-")))
        return _run(scenario, keep / scenario.name, users, rate, duration_s, fault_s)


def _run(
    scenario: Scenario, work: Path, users: int, rate: float, duration_s: float, fault_s: float
) -> dict[str, Any]:
    with started(scenario, work, users, rate, duration_s, fault_s) as run:
        done = threading.Event()
        sending = threading.Event()

        def prepare(load: LoadRun) -> None:
            def before_sending(start: Callable[[], None]) -> None:
                sending.set()  # every user is logged in: the fault hits traffic, not logins
                start()

            load.before_sending = before_sending

        def sample() -> None:
            while not done.wait(0.25):
                run.peak_rss = max(run.peak_rss, run.rss())

        def fault() -> None:
            while not sending.wait(0.1):
                if done.is_set():
                    return
            if not done.wait(duration_s / 3):
                scenario.inject(run, fault_s)

        threads = [threading.Thread(target=t, daemon=True) for t in (sample, fault)]
        for t in threads:
            t.start()
        try:
            report = execute(run.options, prepare=prepare).report()
        finally:
            done.set()
            for t in threads:
                t.join(fault_s + 30)
        return row(scenario, report, run.peak_rss)


def row(scenario: Scenario, report: LoadReport, peak_rss: int) -> dict[str, Any]:
    e = report.errors
    longest_wait_s = max(report.ack_latency.max_ms or 0.0, report.delivery_latency.max_ms or 0.0)
    return {
        "scenario": scenario.name,
        "about": scenario.about,
        "acked": report.acked,
        "sent": report.sent,
        "lost": e["losses"],
        "duplicated": e["duplicates"],
        "reordered": e["reorders"],
        "unanswered": e["timeouts"],
        "reconnects": report.reconnects,
        "recover_s": round(max(report.back_max_s, longest_wait_s / 1000), 2),
        "peak_rss_mb": round(peak_rss / 2**20, 1),
        "ok": report.ok,
        "verdict": next(
            line for line in report.text().splitlines() if line.startswith("verification:")
        ),
        "report": report.to_json(),
    }


def table(rows: list[dict[str, Any]]) -> str:
    columns = "scenario acked lost dup reordered unanswered reconnects recover_s peak_MB verdict"
    head = "| " + " | ".join(c.replace("_", " ") for c in columns.split()) + " |"
    lines = [head, "|---|" + "---:|" * 8 + "---|"]
    for r in rows:
        lines.append(
            f"| {r['scenario']} | {r['acked']:,} | {r['lost']} | {r['duplicated']} | "
            f"{r['reordered']} | {r['unanswered']} | {r['reconnects']} | {r['recover_s']:.2f} | "
            f"{r['peak_rss_mb']:.0f} | {r['verdict']} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated names")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of load per scenario")
    ap.add_argument("--fault", type=float, default=10.0, help="seconds a fault lasts")
    ap.add_argument("--users", type=int, default=40, help="load users (pairs of two)")
    ap.add_argument("--rate", type=float, default=400.0, help="messages/s over all senders")
    ap.add_argument("--keep", type=Path, help="keep each suite's data directory under this one")
    ap.add_argument("--json", help="also write every row (with the full load report) here")
    ap.add_argument("--list", action="store_true", help="name and describe the scenarios")
    args = ap.parse_args()
    if args.list:
        for s in SCENARIOS.values():
            print(f"{s.name:<16}{s.about}")
        return 0
    names = [n for n in args.scenarios.split(",") if n]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        ap.error(f"unknown scenarios: {', '.join(unknown)} (see --list)")
    rows = []
    for name in names:
        r = run_scenario(
            SCENARIOS[name],
            users=args.users,
            rate=args.rate,
            duration_s=args.duration,
            fault_s=args.fault,
            keep=args.keep,
        )
        print(f"{name}: {r['verdict']}", file=sys.stderr, flush=True)
        rows.append(r)
    print(table(rows))
    if args.json:
        Path(args.json).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
