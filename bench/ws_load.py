"""The same verified 1:1 load over WebSocket and over TCP, in one run: the ratio WS / TCP.

Starts one real suite (SQLite; db_proxy_server, login_server, msg_server as processes,
the msg_server's per-connection rate limit lifted, a ``ws_port`` beside its TCP
port), creates users load0..load<2P-1>, and runs ``imreactor load`` as a separate
process, alternating TCP and ``--ws`` runs (``--rounds`` of each, TCP first) so that
both modes see the same machine, the same database and the same noise from whatever
else runs. Each run logs every user in (through login_server: ``port`` for TCP,
``wsURL`` for WebSocket), sends for ``--duration`` seconds with ``--in-flight``
messages per sender, and verifies every delivery; a run that does not verify is
marked.

Printed per mode: the median of acked messages/s, ack and delivery latency (p50 /
p99), and the CPU per acked message of the msg_server (from /proc) and of the load
generator (its own report), logins included;
then WS / TCP of messages/s (goal: at least 0.8) and of msg_server CPU per message.

usage: .venv/bin/python bench/ws_load.py [--pairs 50] [--in-flight 16] [--duration 5]
       [--rounds 3] [--out results.jsonl]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from im_e2e import UNLIMITED, free_ports, loader, ms, role_cpu_seconds

from imreactor.accounts import create_users
from imreactor.servers.suite import SuiteLayout, stop_children

MODES = ("tcp", "ws")
#: The goal of issue 13: WebSocket within 0.8x of TCP.
GOAL = 0.8


def run(opts: argparse.Namespace, work: Path) -> dict[str, list[dict[str, Any]]]:
    """Every run's report, by mode, in the order run."""
    users = 2 * opts.pairs
    http, login, msg, db, ws = free_ports(5)
    layout = SuiteLayout(
        data_dir=work,
        http_port=http,
        login_port=login,
        msg_ports=[msg],
        db_port=db,
        ws_ports=[ws],
        overrides=UNLIMITED,
    )
    work.mkdir(parents=True, exist_ok=True)
    create_users(layout.database_url, [f"load{i}" for i in range(users)], "imreactor")
    children = layout.start_all()
    common = [
        *("--login-url", f"http://127.0.0.1:{http}", "--users", str(users)),
        *("--pairs", str(opts.pairs), "--in-flight", str(opts.in_flight)),
        *("--duration", str(opts.duration)),
    ]
    reports: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    try:
        for round_ in range(1, opts.rounds + 1):
            for mode in MODES:
                cpu_before = role_cpu_seconds(children, "msg")
                report, cmd = loader(
                    [*common, "--ws"] if mode == "ws" else common, opts.duration + 300
                )
                cpu = role_cpu_seconds(children, "msg") - cpu_before
                report["msg_cpu_us_per_msg"] = cpu * 1e6 / max(report["acked"], 1)
                report["loader_cpu_us_per_msg"] = (
                    report["loader_cpu_s"] * 1e6 / max(report["acked"], 1)
                )
                reports[mode].append(report)
                print(
                    f"[round {round_}] {mode}: {report['msgs_per_s']:,.0f} msgs/s, "
                    f"ack p50 {ms(report['ack_latency']['p50_ms'])} ms, "
                    f"msg_server {report['msg_cpu_us_per_msg']:.1f} µs/msg "
                    f"(verified: {report['ok']})\n    $ {cmd}",
                    flush=True,
                )
                time.sleep(0.5)  # closed connections leave before the next logins
    finally:
        stop_children(children)
    return reports


def median(reports: list[dict[str, Any]], *path: str) -> float | None:
    values = []
    for report in reports:
        value: Any = report
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None:
            values.append(float(value))
    return statistics.median(values) if values else None


def table(reports: dict[str, list[dict[str, Any]]], opts: argparse.Namespace) -> str:
    lines = [
        f"WebSocket vs TCP: {opts.pairs} pairs ({2 * opts.pairs} connections, one sender per "
        f"pair), {opts.in_flight} in flight, {opts.duration:g} s per run, median of "
        f"{opts.rounds} alternating runs per mode, SQLite, {os.cpu_count()} CPUs",
        "",
        "| mode | acked msgs/s | ack p50 / p99 ms | delivery p50 / p99 ms "
        "| msg_server CPU µs/msg | loader CPU µs/msg | verified |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for mode in MODES:
        runs = reports[mode]
        bad = [
            ", ".join(f"{k} {v}" for k, v in r["errors"].items() if v) or "nothing acked"
            for r in runs
            if not r["ok"]
        ]
        lines.append(
            f"| {'WebSocket' if mode == 'ws' else 'TCP'} "
            f"| {median(runs, 'msgs_per_s') or 0:,.0f} "
            f"| {ms(median(runs, 'ack_latency', 'p50_ms'))} / "
            f"{ms(median(runs, 'ack_latency', 'p99_ms'))} "
            f"| {ms(median(runs, 'delivery_latency', 'p50_ms'))} / "
            f"{ms(median(runs, 'delivery_latency', 'p99_ms'))} "
            f"| {median(runs, 'msg_cpu_us_per_msg') or 0:.1f} "
            f"| {median(runs, 'loader_cpu_us_per_msg') or 0:.1f} "
            f"| {'NO: ' + '; '.join(bad) if bad else 'yes'} |"
        )
    tcp, ws = (median(reports[m], "msgs_per_s") or 0.0 for m in MODES)
    tcp_cpu, ws_cpu = (median(reports[m], "msg_cpu_us_per_msg") or 0.0 for m in MODES)
    speed = ws / tcp if tcp else 0.0
    verdict = "met" if speed >= GOAL else "NOT met"
    lines += [
        "",
        f"WS / TCP messages/s: {speed:.2f} (goal >= {GOAL}: {verdict})",
        f"WS / TCP msg_server CPU per message: {ws_cpu / tcp_cpu if tcp_cpu else 0.0:.2f}",
    ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--pairs", type=int, default=50, help="client pairs (default 50)")
    ap.add_argument("--in-flight", type=int, default=16, help="per sender (default 16)")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per run (default 5)")
    ap.add_argument("--rounds", type=int, default=3, help="runs per mode (default 3)")
    ap.add_argument("--out", help="also write the raw reports as JSON lines here")
    ap.add_argument("--keep", action="store_true", help="keep the data directory (logs)")
    opts = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="imreactor-ws-load-"))
    try:
        reports = run(opts, work / "suite")
    finally:
        if opts.keep:
            print(f"data kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if opts.out:
        with open(opts.out, "a") as f:
            for mode, runs in reports.items():
                for report in runs:
                    f.write(json.dumps({"mode": mode, "in_flight": opts.in_flight, "im": report}))
                    f.write("\n")
    print()
    print(table(reports, opts))
    return 0 if all(r["ok"] for runs in reports.values() for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
