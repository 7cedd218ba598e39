"""User-space instructions per echoed frame, counted by valgrind's callgrind.

Throughput on these machines moves by 10-25 % from run to run; an instruction
count does not. Each server of ``cpu_split.py`` runs under ``valgrind
--tool=callgrind`` (pinned to CPU 0) with counting off while it starts; once it
prints READY, counting is switched on, the C load generator of ../shared/bench
(CPU 1) drives it, and the count is dumped when the load ends. The result is
the server's own instructions (interpreter, extension modules, libc; not the
kernel's) divided by the frames the load generator completed.

Under valgrind every server runs 20-50 times slower, so each readiness batch
holds about every connection: the per-iteration cost is spread over the same
batch for all of them, which is what makes the counts comparable.

    .venv/bin/python bench/instructions.py                          # 100 conns x 1
    .venv/bin/python bench/instructions.py --depth 16 --servers imreactor,floor

Needs valgrind (Debian package ``valgrind``) and ../shared/bench built once
(bench/echo.sh does that).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cpu_split import SERVERS, run_loaded


def _totals(path: Path) -> int:
    """The instruction total of a callgrind dump (its ``totals:`` or ``summary:`` line)."""
    total = 0
    for line in path.read_text().splitlines():
        if line.startswith(("totals:", "summary:")):
            total = max(total, int(line.split()[1]))
    return total


def measure(name: str, port: int, args: argparse.Namespace, out_dir: Path) -> tuple[int, int]:
    """One run: (instructions counted, frames completed)."""
    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--dump-line=no"]
    valgrind += [f"--callgrind-out-file={out_dir / name}.%p.out"]

    def control(pid: int, *commands: str) -> None:
        for command in commands:
            argv = ["callgrind_control", command, str(pid)]
            subprocess.run(argv, check=True, capture_output=True)

    result = run_loaded(
        name,
        port,
        args,
        wrapper=valgrind,
        on_ready=lambda pid: control(pid, "--instr=on"),
        after_load=lambda pid: control(pid, "--instr=off", "--dump"),
    )
    dumps = sorted(out_dir.glob(f"{name}.*.out*"))  # this server's, whatever its pid
    # Counting was on only between --instr=on and the dump: the dump taken then
    # holds the whole count; the one written at exit adds nothing after it.
    instructions = sum(_totals(d) for d in dumps)
    for d in dumps:
        d.unlink()
    return instructions, int(result["frames"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--servers", default="imreactor,floor,uvloop,lean,C")
    ap.add_argument("--conns", type=int, default=100)
    ap.add_argument("--depth", type=int, default=1, help="frames in flight per connection")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of load per server")
    args = ap.parse_args()
    names = args.servers.split(",")
    unknown = set(names) - set(SERVERS)
    if unknown:
        ap.error(f"unknown servers {sorted(unknown)}; known: {', '.join(SERVERS)}")
    port = 24000 + os.getpid() % 1000
    results: dict[str, tuple[int, int]] = {}
    with tempfile.TemporaryDirectory(prefix="callgrind-") as tmp:
        for name in names:
            port += 1
            results[name] = measure(name, port, args, Path(tmp))
            insns, frames = results[name]
            print(f"{name:10s} {frames:>9,} frames  {insns / frames:>9,.0f} instructions/frame")
            sys.stdout.flush()
            time.sleep(0.5)
    print(f"\n{args.conns} connections x {args.depth} in flight, user-space instructions")
    print(f"| server | frames | instructions/frame | server / {names[0]} |")
    print("|---|---:|---:|---:|")
    first = results[names[0]][0] / results[names[0]][1]
    for name in names:
        insns, frames = results[name]
        per = insns / frames
        print(f"| {name} | {frames:,} | {per:,.0f} | {per / first:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
