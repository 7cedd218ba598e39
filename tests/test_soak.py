"""bench/soak.py: its growth rule on made-up series, and a 2-minute soak of a real suite."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOAK = ROOT / "bench" / "soak.py"
MIB = 2**20


def soak() -> ModuleType:
    spec = importlib.util.spec_from_file_location("soak", SOAK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = module  # dataclasses look their module up while building
    spec.loader.exec_module(module)
    return module


def series(values: list[float], step_s: float = 10.0) -> list[tuple[float, float]]:
    return [(i * step_s, v) for i, v in enumerate(values)]


def test_a_steady_leak_is_growth() -> None:
    leak = series([50 * MIB + i * 2 * MIB for i in range(12)])  # 2 MiB every sample
    why = soak().growth(leak, 8 * MIB)
    assert why is not None and "still rising" in why


def test_a_warm_up_that_levels_off_is_not_growth() -> None:
    # Up by 30 MiB in the first half, then flat: caches filled, no leak.
    warm = series([50, 60, 70, 80, 80, 80, 80, 80, 80, 80, 80, 80])
    assert soak().growth([(t, v * MIB) for t, v in warm], 8 * MIB) is None


def test_a_rise_within_the_allowance_and_noise_are_not_growth() -> None:
    s = soak()
    assert s.growth(series([100, 101, 99, 102, 100, 103, 101, 104]), 16) is None
    assert s.growth(series([5, 9, 5, 9, 5, 9, 5, 9]), 16) is None
    assert s.growth(series([1, 2, 3]), 0) is None  # too few samples to judge


def test_judge_names_the_server_and_the_series() -> None:
    s = soak()
    w = s.Watched("msg_server1", child=None, metrics_url="")
    for i in range(10):
        w.samples.append(s.Sample(i * 10.0, 40 * MIB, 100 + 10 * i, 0.0, 0.0, 0.0, {}))
    (found,) = s.judge([w])
    assert found.startswith("msg_server1 open fds grows")


def test_lag_is_the_highest_bucket_observed_since_the_previous_scrape() -> None:
    lag_since = soak().lag_since
    before = {0.01: 10.0, 0.1: 12.0, 1.0: 12.0, float("inf"): 12.0}
    assert lag_since(before, {0.01: 15.0, 0.1: 17.0, 1.0: 17.0, float("inf"): 17.0}) == 0.01
    assert lag_since(before, {0.01: 15.0, 0.1: 18.0, 1.0: 18.0, float("inf"): 18.0}) == 0.1
    assert lag_since(before, before) == 0.0
    assert lag_since({}, {0.01: 0.0, float("inf"): 1.0}) == float("inf")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_two_minute_soak_finds_no_growth_and_verifies_every_message() -> None:
    done = subprocess.run(
        [sys.executable, str(SOAK), "--duration", "120", "--interval", "10"],
        capture_output=True,
        text=True,
        timeout=540,
    )
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "soak: OK" in done.stdout
    assert "| msg_server1 |" in done.stdout and "| db_proxy_server |" in done.stdout
