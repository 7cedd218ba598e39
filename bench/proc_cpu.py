"""CPU time of a process read from ``/proc`` (Linux): what the benchmarks charge to a server."""

from __future__ import annotations

import os


def cpu_seconds(pid: int) -> tuple[float, float]:
    """``(user, system)`` CPU seconds that ``pid`` has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        # Fields after the command name, which may itself contain spaces or ")".
        fields = f.read().rsplit(")", 1)[1].split()
    hz = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / hz, int(fields[12]) / hz
