"""Print imreactor's results as ratios against every peer measured in the same run.

Reads the JSON lines written by ../shared/bench/bench.py (one line per
measurement) and prints, per scenario, the median of imreactor ("mine") and
of each peer, and mine/peer (for bytes per idle connection, peer/mine, so that
above 1.0 always means imreactor is better).

usage: python bench/ratios.py RESULTS.jsonl [--mine NAME]
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict

LABELS = {
    "a": "asyncio",
    "a_batch": "asyncio batched",
    "b": "asyncio streams",
    "c": "uvloop",
    "d": "tornado",
    "e": "twisted",
    "f": "gevent",
    "g": "lean selectors",
    "h": "C epoll",
    "floor": "pure-Python floor",
}
SCENARIOS = {
    "s1": "1 conn ping-pong",
    "s1k": "1 conn ping-pong 1 KiB",
    "s2": "100 conns x 1",
    "s3": "100 conns x 16",
    "s3k": "100 conns x 16, 1 KiB",
    "s4": "1000 conns x 1",
    "s5": "bytes/idle conn (10k)",
    "s6": "100 x 16, 2 procs",
}


def load(path: str) -> dict[str, dict[str, list[float]]]:
    """scenario -> server -> list of values (frames/s, or bytes per idle connection)."""
    data: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            value = row.get("bytes_per_conn") if row["scenario"] == "s5" else row.get("fps")
            if value is not None and not row.get("errors"):
                data[row["scenario"]][row["server"]].append(float(value))
    return data


def report(data: dict[str, dict[str, list[float]]], mine: str) -> str:
    peers = sorted({s for servers in data.values() for s in servers if s != mine})
    head = "| scenario | imreactor | " + " | ".join(f"x {LABELS.get(p, p)}" for p in peers) + " |"
    lines = [head, "|---|---:|" + "---:|" * len(peers)]
    for scenario in sorted(data, key=lambda s: list(SCENARIOS).index(s) if s in SCENARIOS else 99):
        servers = data[scenario]
        if mine not in servers:
            continue
        m = statistics.median(servers[mine])
        lower_is_better = scenario == "s5"
        cells = []
        for p in peers:
            if p not in servers:
                cells.append("-")
                continue
            v = statistics.median(servers[p])
            ratio = v / m if lower_is_better else m / v
            cells.append(f"{ratio:.2f}")
        shown = f"{m:,.0f} B" if lower_is_better else f"{m:,.0f}/s"
        label = SCENARIOS.get(scenario, scenario)
        lines.append(f"| {label} | {shown} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results")
    ap.add_argument("--mine", default="mine")
    args = ap.parse_args()
    print(report(load(args.results), args.mine))
    print("\nRatios are imreactor / peer (bytes per connection: peer / imreactor): > 1 is better.")


if __name__ == "__main__":
    main()
