"""Every fault scenario of bench/faults.py, short, under the verifying load generator.

Each starts its own suite, injects its fault (a killed server, a black-holed link, every
client reset, sliced and delayed bytes) while verified 1:1 traffic runs, and must end
with every acknowledged message delivered exactly once and in order, and no message
left without an answer. The figures of the full-length runs are in docs/reliability.md.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def faults_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("faults", ROOT / "bench" / "faults.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["faults"] = module  # its dataclasses look the module up while building
    spec.loader.exec_module(module)
    return module


FAULTS = faults_bench()


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("name", list(FAULTS.SCENARIOS))
def test_nothing_acknowledged_is_lost_and_nothing_goes_unanswered(
    name: str, tmp_path: Path
) -> None:
    row = FAULTS.run_scenario(
        FAULTS.SCENARIOS[name], users=12, rate=200.0, duration_s=6.0, fault_s=2.0, keep=tmp_path
    )
    summary = {k: row[k] for k in ("acked", "lost", "duplicated", "reordered", "unanswered")}
    assert row["ok"], f"{row['verdict']}: {summary}; {row['report']['problems'][:5]}"
    assert row["acked"] > 0
    assert row["lost"] == row["duplicated"] == row["reordered"] == row["unanswered"] == 0
    if name in ("kill-msg", "restart-msg", "drop-all"):
        assert row["reconnects"] > 0, "the fault dropped nobody: it did not happen"
