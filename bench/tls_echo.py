"""TLS frame echo: imreactor against asyncio's and uvloop's TLS, measured in the same run.

Every server is the same frame echo (16-byte TeamTalk header, each whole frame
written back) behind its own event loop's TLS layer: imreactor's ``net.tls``
(``bench/echo_server.py --tls``, default poller) and ``ssl=`` on asyncio's and
uvloop's ``create_server`` (``bench/tls_peer_server.py``); imreactor over
plain TCP runs alongside as the reference for what TLS costs. The load comes
from ``bench/tls_loadgen.c`` (OpenSSL, built into ~/.cache/peer-bench), which
verifies each server's certificate (a CA and certificate made for this run),
checks length and sequence of every echoed frame, and reports frames/s and
round-trip latency.

Scenarios, as in ../shared/bench: 100 connections with 1 and with 16 frames
in flight each (64-byte body), the server pinned to CPU 0 and the load
generator to CPU 1; servers take turns, and the order rotates each
repetition, so that the machine's drift spreads over all of them. The machine
is shared: each run starts once CPU 0 and CPU 1 have had a quiet second, and a
run in which other processes took more than ``--max-others`` of either CPU is
recorded as disturbed, left out of the tables and done again. Idle: each
server holds ``--idle-conns`` connections, each with its handshake done and one
frame echoed, and the growth of its RSS (``VmRSS``) is divided by their number.

    PYTHONPATH=src .venv/bin/python bench/tls_echo.py                  # 3 reps, 5 s runs
    PYTHONPATH=src .venv/bin/python bench/tls_echo.py --reps 1 --duration 2 --idle-conns 500
    PYTHONPATH=src .venv/bin/python bench/tls_echo.py --report bench/results/tls-echo-….jsonl

uvloop runs from the first interpreter that has it: this one, then the peers'
venv (``$PEERS_VENV``, default ~/.cache/peer-bench/venv); without it the
uvloop columns are left out. asyncio runs on that same interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from proc_cpu import cpu_seconds

from imreactor import pki

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
BUILD = Path(os.environ.get("PEERS_BUILD", Path.home() / ".cache" / "peer-bench"))
PEERS_VENV = Path(os.environ.get("PEERS_VENV", BUILD / "venv"))
LOADGEN = BUILD / "tls_loadgen"

#: (connections, frames in flight per connection); 64-byte bodies.
SCENARIOS: dict[str, tuple[int, int]] = {"100x1": (100, 1), "100x16": (100, 16)}
BODY_BYTES = 64
#: Below the 20,000 descriptors a process may have here: the server holds one per connection.
MAX_IDLE_CONNS = 15_000
START_TIMEOUT_S = 20.0
#: How long to wait for other processes to leave CPU 0 and CPU 1 alone before a run.
QUIET_TIMEOUT_S = 30.0

#: scenario -> server -> runs (the load generator's JSON, with what the driver adds).
Results = dict[str, dict[str, list[dict[str, Any]]]]

# The issue's goals: imreactor / uvloop frames/s.
GOALS = {"100x1": 1.0, "100x16": 1.5}

LABELS = {
    "imreactor": "imreactor",
    "uvloop": "uvloop",
    "asyncio": "asyncio",
    "imreactor-tcp": "imreactor, plain TCP",
}


@dataclass(frozen=True)
class Server:
    """How to start one server: ``argv`` gets ``--port 0``; it prints ``READY ... <port>``."""

    name: str
    argv: list[str]
    tls: bool


def log(*parts: object) -> None:
    print(time.strftime("%H:%M:%S"), *parts, file=sys.stderr, flush=True)


def build_loadgen() -> None:
    """Compile tls_loadgen.c (cheap; done every run, as run.sh does for the plain one)."""
    BUILD.mkdir(parents=True, exist_ok=True)
    cc = os.environ.get("CC", "cc")
    source = BENCH / "tls_loadgen.c"
    argv = [cc, "-O2", "-Wall", "-o", str(LOADGEN), str(source), "-lssl", "-lcrypto"]
    subprocess.run(argv, check=True)


def has_uvloop(python: str) -> bool:
    probe = subprocess.run([python, "-c", "import uvloop"], capture_output=True)
    return probe.returncode == 0


def peer_python() -> tuple[str, bool]:
    """The interpreter for the asyncio and uvloop servers, and whether it has uvloop."""
    candidates = [sys.executable, str(PEERS_VENV / "bin" / "python")]
    for python in candidates:
        if Path(python).exists() and has_uvloop(python):
            return python, True
    return sys.executable, False


def make_certificates(directory: Path) -> tuple[pki.CertFiles, pki.CertFiles]:
    """A CA and a certificate for localhost / 127.0.0.1 signed by it."""
    ca = pki.create_ca(directory, "tls_echo benchmark CA")
    return ca, pki.issue(ca, directory, "localhost", hosts=["localhost", "127.0.0.1"])


def servers(cert: pki.CertFiles, names: Sequence[str]) -> list[Server]:
    python, uvloop = peer_python()
    echo = [sys.executable, str(BENCH / "echo_server.py")]
    peer = [python, str(BENCH / "tls_peer_server.py"), "--cert", str(cert.cert)]
    peer += ["--key", str(cert.key)]
    known = {
        "imreactor": Server("imreactor", [*echo, "--tls", str(cert.cert), str(cert.key)], True),
        "uvloop": Server("uvloop", [*peer, "--uvloop"], True),
        "asyncio": Server("asyncio", peer, True),
        "imreactor-tcp": Server("imreactor-tcp", echo, False),
    }
    chosen = []
    for name in names:
        if name not in known:
            raise SystemExit(f"unknown server {name!r}; known: {', '.join(known)}")
        if name == "uvloop" and not uvloop:
            log(f"uvloop is installed neither here nor in {PEERS_VENV}: left out")
            continue
        chosen.append(known[name])
    return chosen


def pinned(cpu: str, argv: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *argv] if shutil.which("taskset") else argv


def start(server: Server, logf: IO[bytes]) -> tuple[subprocess.Popen[str], int]:
    """Start ``server`` on CPU 0 and wait for READY; returns the process and its port."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    proc = subprocess.Popen(
        pinned("0", [*server.argv, "--port", "0"]),
        stdout=subprocess.PIPE,
        stderr=logf,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT_S)
    line = proc.stdout.readline() if ready else ""
    if not line.startswith("READY"):
        stop(proc)
        raise RuntimeError(f"{server.name} did not start (rc={proc.poll()}); see the server log")
    return proc, int(line.split()[-1])


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()


def loadgen_argv(server: Server, port: int, ca: pki.CertFiles, *args: str) -> list[str]:
    argv = [str(LOADGEN), "--port", str(port), "--body", str(BODY_BYTES), *args]
    argv += ["--ca", str(ca.cert)] if server.tls else ["--plain"]
    return pinned("1", argv)


def run_load(
    server: Server,
    proc: subprocess.Popen[str],
    port: int,
    ca: pki.CertFiles,
    conns: int,
    depth: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """One load run; adds the server's CPU use over the measured window."""
    argv = loadgen_argv(server, port, ca, "--conns", str(conns), "--depth", str(depth))
    argv += ["--duration", str(args.duration), "--warmup", str(args.warmup)]
    client = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Sample CPU use inside the measured window (after connecting and warm-up): the
    # server's, the load generator's, and what everything else took of their two CPUs.
    time.sleep(args.warmup + 0.3)
    t0, (u0, s0), busy0 = time.monotonic(), cpu_seconds(proc.pid), cpu_busy()
    c0 = sum(cpu_seconds(client.pid))
    time.sleep(max(0.5, args.duration - 0.5))
    t1, (u1, s1), busy1 = time.monotonic(), cpu_seconds(proc.pid), cpu_busy()
    c1 = sum(cpu_seconds(client.pid))
    try:
        out, err = client.communicate(timeout=args.duration + args.warmup + 120)
    except subprocess.TimeoutExpired:
        client.kill()
        client.communicate()
        return {"error": "load generator timed out"}
    lines = out.strip().splitlines()
    if not lines:
        return {"error": f"no load generator output (rc={client.returncode}): {err[-200:]}"}
    result: dict[str, Any] = json.loads(lines[-1])
    server_cpu = (u1 - u0 + s1 - s0) / (t1 - t0)
    result["server_cpu"] = round(server_cpu, 3)
    result["server_user_share"] = round((u1 - u0) / max(1e-9, u1 - u0 + s1 - s0), 3)
    if result.get("fps"):
        result["server_cpu_us_per_frame"] = round(server_cpu * 1e6 / result["fps"], 3)
    window = t1 - t0
    others = busy1[0] - busy0[0] - (u1 - u0 + s1 - s0), busy1[1] - busy0[1] - (c1 - c0)
    result["others_cpu0"] = round(max(0.0, others[0] / window), 3)
    result["others_cpu1"] = round(max(0.0, others[1] / window), 3)
    return result


def disturbed(result: dict[str, Any], max_others: float) -> bool:
    """Did other processes take more than ``max_others`` of CPU 0 or CPU 1 during the run?"""
    others = max(result.get("others_cpu0", 0.0), result.get("others_cpu1", 0.0))
    return bool(others > max_others)


def wait_quiet(max_others: float, timeout_s: float = QUIET_TIMEOUT_S) -> None:
    """Wait until a second passes in which CPU 0 and CPU 1 are both at most ``max_others``
    busy (our idle server costs nothing there); after ``timeout_s``, go on regardless."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        t0, busy0 = time.monotonic(), cpu_busy()
        time.sleep(1.0)
        t1, busy1 = time.monotonic(), cpu_busy()
        if max(b - a for a, b in zip(busy0, busy1, strict=True)) / (t1 - t0) <= max_others:
            return
    log(f"CPUs 0 and 1 not quiet for {timeout_s:g} s: measuring anyway")


def cpu_busy() -> tuple[float, float]:
    """Seconds that CPU 0 and CPU 1 have spent running processes (user, nice, system)."""
    hz = os.sysconf("SC_CLK_TCK")
    busy = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *fields = line.split()
            if name in ("cpu0", "cpu1"):
                busy[name] = (int(fields[0]) + int(fields[1]) + int(fields[2])) / hz
    return busy.get("cpu0", 0.0), busy.get("cpu1", 0.0)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def run_idle(
    server: Server, proc: subprocess.Popen[str], port: int, ca: pki.CertFiles, conns: int
) -> dict[str, Any]:
    """Open ``conns`` idle connections (handshake and one echo each); RSS growth per connection."""
    time.sleep(0.5)
    before = rss_kib(proc.pid)
    argv = loadgen_argv(server, port, ca, "--idle", "--conns", str(conns), "--batch", "200")
    argv += ["--hold", "60"]
    client = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert client.stdout is not None
    result: dict[str, Any] = {"error": "the idle client did not report"}
    try:
        ready, _, _ = select.select([client.stdout], [], [], 120)
        if ready:
            result = json.loads(client.stdout.readline())
            time.sleep(1.0)  # let the server settle
            after = rss_kib(proc.pid)
            up = max(1, int(result.get("up", 0)))
            result.update(
                rss_before_kib=before,
                rss_after_kib=after,
                bytes_per_conn=round((after - before) * 1024 / up),
            )
    finally:
        client.terminate()
        try:
            client.wait(10)
        except subprocess.TimeoutExpired:
            client.kill()
            client.wait(10)
        client.stdout.close()
    return result


def measure(args: argparse.Namespace, out: IO[str], logf: IO[bytes]) -> None:
    with tempfile.TemporaryDirectory(prefix="tls-echo-") as tmp:
        ca, cert = make_certificates(Path(tmp))
        load_servers = servers(cert, args.servers.split(","))
        idle_servers = servers(cert, args.idle_servers.split(",")) if args.idle_conns else []
        scenarios = args.scenarios.split(",")

        def emit(record: dict[str, Any]) -> None:
            record["ts"] = round(time.time(), 3)
            out.write(json.dumps(record) + "\n")
            out.flush()

        for rep in range(args.reps):
            # Rotate the order each repetition, to spread the machine's drift.
            shift = rep % max(1, len(load_servers))
            for server in load_servers[shift:] + load_servers[:shift]:
                proc, port = start(server, logf)
                try:
                    for scenario in scenarios:
                        conns, depth = SCENARIOS[scenario]
                        # A run that other processes disturbed is recorded, and done again.
                        for attempt in range(args.attempts):
                            wait_quiet(args.max_others)
                            res = run_load(server, proc, port, ca, conns, depth, args)
                            bad = disturbed(res, args.max_others)
                            res.update(rep=rep, scenario=scenario, server=server.name)
                            res.update(attempt=attempt, disturbed=bad)
                            emit(res)
                            log(
                                f"rep{rep} {scenario:6s} {server.name:13s} fps={res.get('fps')}"
                                f" p50={res.get('p50_us')} p99={res.get('p99_us')}"
                                f" srv={res.get('server_cpu')} cli={res.get('client_cpu')}"
                                f" others={res.get('others_cpu0')}/{res.get('others_cpu1')}"
                                f" err={res.get('errors', res.get('error'))}"
                                + (" (disturbed)" if bad else "")
                            )
                            if not bad:
                                break
                finally:
                    stop(proc)
            shift = rep % max(1, len(idle_servers))
            for server in idle_servers[shift:] + idle_servers[:shift]:
                proc, port = start(server, logf)
                try:
                    res = run_idle(server, proc, port, ca, args.idle_conns)
                finally:
                    stop(proc)
                res.update(rep=rep, scenario="idle", server=server.name)
                emit(res)
                log(
                    f"rep{rep} idle   {server.name:13s} up={res.get('up')} "
                    f"B/conn={res.get('bytes_per_conn')} err={res.get('errors', res.get('error'))}"
                )


def load(path: Path, max_others: float) -> tuple[Results, int]:
    """scenario -> server -> the runs without errors in which other processes took at
    most ``max_others`` of CPU 0 and of CPU 1; and how many load runs that left out."""
    data: Results = defaultdict(lambda: defaultdict(list))
    dropped = 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if row.get("error") or row.get("errors"):
            continue
        if row["scenario"] != "idle" and disturbed(row, max_others):
            dropped += 1
            continue
        data[row["scenario"]][row["server"]].append(row)
    return data, dropped


def median(rows: list[dict[str, Any]], key: str) -> float:
    values = [float(r[key]) for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else float("nan")


def report(loaded: tuple[Results, int], max_others: float) -> str:
    data, dropped = loaded
    order = [s for s in LABELS if any(s in data[sc] for sc in data)]
    peers = [p for p in ("uvloop", "asyncio") if p in order]
    lines: list[str] = []
    counts = [len(data[sc][s]) for sc in SCENARIOS if sc in data for s in order if data[sc][s]]
    if not counts:
        return f"No runs left to show ({dropped} left out as disturbed; see --max-others)."
    n = f"{min(counts)}-{max(counts)}" if min(counts) != max(counts) else str(counts[0])
    lines.append(f"Frames/s, medians of {n} runs each; 64-byte body; ratios from the same run.")
    lines.append(
        f"Left out: {dropped} runs in which other processes took more than {max_others:.0%}"
        " of CPU 0 or CPU 1 (each was done again, up to --attempts times)."
    )
    lines.append("")
    head = "| scenario | " + " | ".join(LABELS[s] for s in order)
    head += "".join(f" | imreactor / {p}" for p in peers) + " |"
    lines += [head, "|---|" + "---:|" * (len(order) + len(peers))]
    verdicts = []
    for scenario in SCENARIOS:
        if scenario not in data:
            continue
        rows = data[scenario]
        fps = {s: median(rows[s], "fps") for s in order if rows.get(s)}
        cells = [f"{fps[s]:,.0f}" if s in fps else "-" for s in order]
        for p in peers:
            if "imreactor" in fps and p in fps:
                cells.append(f"{fps['imreactor'] / fps[p]:.2f}")
            else:
                cells.append("-")
        lines.append(f"| {scenario.replace('x', ' x ')} | " + " | ".join(cells) + " |")
        if "imreactor" in fps and "uvloop" in fps and scenario in GOALS:
            ratio, goal = fps["imreactor"] / fps["uvloop"], GOALS[scenario]
            met = "met" if ratio >= goal else "not met"
            verdicts.append(f"- {scenario}: imreactor / uvloop {ratio:.2f}, goal {goal:.1f}: {met}")
    lines += ["", *verdicts, ""]
    lines.append("Spread and cost: frames/s of the slowest and fastest run; then medians of the")
    lines.append("p50 / p99 round trip, the server's CPU µs per echoed frame (user + kernel), and")
    lines.append("how busy the server (CPU 0) and the load generator (CPU 1) were, and how much of")
    lines.append("CPU 0 / CPU 1 other processes took meanwhile (this machine is shared).")
    lines.append("")
    lines += ["| scenario | server | frames/s range | p50 µs | p99 µs | server µs/frame "]
    lines[-1] += "| server CPU | client CPU | others |"
    lines += ["|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for scenario in SCENARIOS:
        for s in order:
            runs = data.get(scenario, {}).get(s)
            if not runs:
                continue
            fps_all = [float(r["fps"]) for r in runs]
            spread = f"{min(fps_all) / 1e3:,.0f}k-{max(fps_all) / 1e3:,.0f}k"
            lines.append(
                f"| {scenario.replace('x', ' x ')} | {LABELS[s]} | {spread} "
                f"| {median(runs, 'p50_us'):,.0f} "
                f"| {median(runs, 'p99_us'):,.0f} | {median(runs, 'server_cpu_us_per_frame'):.2f} "
                f"| {median(runs, 'server_cpu'):.0%} | {median(runs, 'client_cpu'):.0%} "
                f"| {median(runs, 'others_cpu0'):.0%} / {median(runs, 'others_cpu1'):.0%} |"
            )
    idle = data.get("idle")
    if idle:
        conns = max(int(r.get("up", 0)) for runs in idle.values() for r in runs)
        lines += ["", f"Server RSS growth per idle connection ({conns:,} connections, medians):"]
        lines += ["", "| server | bytes per connection |", "|---|---:|"]
        for s in order:
            if idle.get(s):
                lines.append(f"| {LABELS[s]} | {median(idle[s], 'bytes_per_conn'):,.0f} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds of load before measuring")
    ap.add_argument("--servers", default="imreactor,uvloop,asyncio,imreactor-tcp")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--idle-conns", type=int, default=2000, help="0: no idle measurement")
    ap.add_argument("--idle-servers", default="imreactor,uvloop,asyncio,imreactor-tcp")
    ap.add_argument("--out", type=Path, help="JSON lines (default bench/results/tls-echo-*.jsonl)")
    ap.add_argument("--report", type=Path, metavar="JSONL", help="only print the tables of a run")
    ap.add_argument(
        "--max-others",
        type=float,
        default=0.10,
        metavar="SHARE",
        help="leave out of the tables the runs in which other processes took more than this"
        " share of CPU 0 or CPU 1, and do such runs again (default 0.10; 1 keeps every run)",
    )
    ap.add_argument(
        "--attempts", type=int, default=3, help="tries per measurement while runs are disturbed"
    )
    args = ap.parse_args()
    if args.report is not None:
        print(report(load(args.report, args.max_others), args.max_others))
        return 0
    unknown = set(args.scenarios.split(",")) - set(SCENARIOS)
    if unknown:
        ap.error(f"unknown scenarios {sorted(unknown)}; known: {', '.join(SCENARIOS)}")
    if args.idle_conns > MAX_IDLE_CONNS:
        ap.error(f"--idle-conns above {MAX_IDLE_CONNS:,} would pass the open-file limit")
    build_loadgen()
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    out_path = args.out or results / f"tls-echo-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    with open(out_path, "a") as out, open(results / "tls-echo-servers.log", "ab") as logf:
        measure(args, out, logf)
    print(f"## TLS frame echo ({out_path})\n")
    print(report(load(out_path, args.max_others), args.max_others))
    return 0


if __name__ == "__main__":
    sys.exit(main())
