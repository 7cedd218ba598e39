"""Where a frame-echo server's CPU goes: user and kernel microseconds per frame.

Runs each server pinned to CPU 0 under the C load generator of ../shared/bench
(pinned to CPU 1) for one scenario, and reads the server's utime and stime
from /proc over the run. Servers take turns, repetition after repetition, so
that the machine's drift spreads over all of them; the table shows medians.

    .venv/bin/python bench/cpu_split.py                       # s2: 100 conns x 1 in flight
    .venv/bin/python bench/cpu_split.py --depth 16 --reps 5   # s3

Needs ../shared/bench/run.sh to have built the load generator and the peers'
venv once (bench/echo.sh does that).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from proc_cpu import cpu_seconds

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("PEER_BENCH_DIR", ROOT.parent / "shared" / "bench")).resolve()
BUILD = Path(os.environ.get("PEERS_BUILD", Path.home() / ".cache" / "peer-bench"))
PEER_PY = BUILD / "venv" / "bin" / "python"
OUR_PY = ROOT / ".venv" / "bin" / "python"

SERVERS: dict[str, tuple[list[str], Path]] = {
    "imreactor": ([str(OUR_PY), str(ROOT / "bench" / "echo_server.py")], ROOT),
    "floor": ([str(OUR_PY), str(ROOT / "bench" / "floor_server.py")], ROOT),
    "floor-flush": (
        [str(OUR_PY), str(ROOT / "bench" / "floor_server.py"), "--flush-per-iteration"],
        ROOT,
    ),
    "uvloop": ([str(PEER_PY), "srv_asyncio_proto.py", "--uvloop"], SHARED / "servers"),
    "lean": ([str(PEER_PY), "srv_selectors.py"], SHARED / "servers"),
    "C": ([str(BUILD / "srv_c")], SHARED / "servers"),
}


def run_loaded(
    name: str,
    port: int,
    args: argparse.Namespace,
    wrapper: Sequence[str] = (),
    on_ready: Callable[[int], None] = lambda pid: None,
    after_load: Callable[[int], None] = lambda pid: None,
) -> dict[str, Any]:
    """Start server ``name`` on CPU 0 (under ``wrapper``, e.g. valgrind), drive it from CPU 1.

    ``on_ready(pid)`` runs once the server prints READY, ``after_load(pid)`` once the
    load generator is done, before the server is stopped. Returns the load
    generator's JSON result (``fps``, ``frames``, latencies).
    """
    argv, cwd = SERVERS[name]
    server = subprocess.Popen(
        ["taskset", "-c", "0", *wrapper, *argv, "--port", str(port)],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert server.stdout is not None
        if not server.stdout.readline().startswith("READY"):
            raise RuntimeError(f"{name} did not start")
        on_ready(server.pid)
        loadgen = [str(BUILD / "loadgen"), "--port", str(port), "--body", "64", "--warmup", "0"]
        loadgen += ["--conns", str(args.conns), "--depth", str(args.depth)]
        loadgen += ["--duration", str(args.duration)]
        load = subprocess.run(
            ["taskset", "-c", "1", *loadgen],
            capture_output=True,
            text=True,
            timeout=args.duration + 120,
            check=True,
        )
        after_load(server.pid)
    finally:
        server.terminate()
        server.wait(60)
    result: dict[str, Any] = json.loads(load.stdout.strip().splitlines()[-1])
    return result


def measure(name: str, port: int, args: argparse.Namespace) -> tuple[float, float, float]:
    """One run: (frames/s, user µs per frame, kernel µs per frame)."""
    before: list[tuple[float, float]] = []
    after: list[tuple[float, float]] = []
    result = run_loaded(
        name,
        port,
        args,
        on_ready=lambda pid: before.append(cpu_seconds(pid)),
        after_load=lambda pid: after.append(cpu_seconds(pid)),
    )
    (u0, s0), (u1, s1) = before[0], after[0]
    fps = float(result["fps"])
    frames = fps * args.duration
    return fps, (u1 - u0) * 1e6 / frames, (s1 - s0) * 1e6 / frames


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--servers", default=",".join(SERVERS), help="comma-separated names")
    ap.add_argument("--conns", type=int, default=100)
    ap.add_argument("--depth", type=int, default=1, help="frames in flight per connection")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per run")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    names = args.servers.split(",")
    unknown = set(names) - set(SERVERS)
    if unknown:
        ap.error(f"unknown servers {sorted(unknown)}; known: {', '.join(SERVERS)}")
    runs: dict[str, list[tuple[float, float, float]]] = {n: [] for n in names}
    port = 23000 + os.getpid() % 1000
    for rep in range(args.reps):
        for name in names:
            port += 1
            fps, user, kernel = measure(name, port, args)
            runs[name].append((fps, user, kernel))
            print(f"rep{rep} {name:10s} {fps:>11,.0f}/s  user {user:.2f}  kernel {kernel:.2f} µs")
            sys.stdout.flush()
            time.sleep(0.5)
    print(f"\n{args.conns} connections x {args.depth} in flight, medians of {args.reps}")
    print("| server | frames/s | user µs/frame | kernel µs/frame | total µs/frame |")
    print("|---|---:|---:|---:|---:|")
    for name in names:
        fps = statistics.median(r[0] for r in runs[name])
        user = statistics.median(r[1] for r in runs[name])
        kernel = statistics.median(r[2] for r in runs[name])
        print(f"| {name} | {fps:,.0f} | {user:.2f} | {kernel:.2f} | {user + kernel:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
