"""The systemd units under deploy/: each runs a real server role, drains in time, and
passes ``systemd-analyze verify`` (which needs no running systemd, so it runs in CI
containers too)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from imreactor.cli import build_parser
from imreactor.servers.runner import DEFAULT_DRAIN_TIMEOUT_S

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
SERVICES = sorted(DEPLOY.glob("*.service"))
UNITS = SERVICES + sorted(DEPLOY.glob("*.target"))
SERVER_ROLES = {"login-server", "msg-server", "db-proxy-server", "route-server", "msfs"}
#: Where the units expect the imreactor command (docs/deployment.md installs it there).
INSTALLED = "/opt/imreactor/bin/imreactor"


def directives(unit: Path) -> dict[str, list[str]]:
    """Key → every value it is given, across the unit's sections (comments dropped)."""
    found: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_there_is_one_templated_unit_per_role_and_a_target() -> None:
    roles = {directives(unit)["ExecStart"][0].split()[1] for unit in SERVICES}
    assert roles == SERVER_ROLES
    assert all(unit.name.endswith("@.service") for unit in SERVICES)
    assert (DEPLOY / "imreactor.target").exists()


@pytest.mark.parametrize("unit", SERVICES, ids=lambda p: p.name)
def test_each_unit_runs_a_cli_role_with_its_config_and_drains_in_time(unit: Path) -> None:
    d = directives(unit)
    (exec_start,) = d["ExecStart"]
    argv = exec_start.split()
    assert argv[0] == INSTALLED
    # The command line as imreactor parses it (an unknown command or option exits 2).
    args = build_parser().parse_args([a.replace("%i", "test") for a in argv[1:]])
    assert args.command == argv[1] and argv[1] in SERVER_ROLES
    assert argv[2] == "-c" and re.fullmatch(r"/etc/imreactor/[a-z-]+-%i\.toml", argv[3])
    assert d["KillSignal"] == ["SIGTERM"]
    # systemd must not SIGKILL a server still inside its drain_timeout_s.
    assert float(d["TimeoutStopSec"][0]) > DEFAULT_DRAIN_TIMEOUT_S
    assert int(d["LimitNOFILE"][0]) >= 65536
    assert d["User"] == ["imreactor"]
    for hardening in ("NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp"):
        assert hardening in d, f"{unit.name}: no {hardening}"


def _verify(units: list[Path], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify`` on copies of ``units`` whose ExecStart is this venv's
    imreactor (verify checks that the command exists), one instance of each template."""
    imreactor = Path(sys.executable).with_name("imreactor")
    if not imreactor.exists():
        found = shutil.which("imreactor")
        if found is None:
            pytest.skip("no imreactor command installed next to this Python or on PATH")
        imreactor = Path(found)
    for unit in units:
        (tmp_path / unit.name).write_text(unit.read_text().replace(INSTALLED, str(imreactor)))
    names = [str(tmp_path / unit.name.replace("@.", "@test.")) for unit in units]
    return subprocess.run(
        ["systemd-analyze", "verify", *names],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )


def _complaints(proc: subprocess.CompletedProcess[str], units: list[Path]) -> list[str]:
    """What verify said about our files (it only warns, exit 0, about unknown keys and
    values it cannot parse; other units of the machine may draw warnings of their own)."""
    stems = [unit.name.split("@")[0].split(".")[0] for unit in units]
    return [line for line in proc.stderr.splitlines() if any(stem in line for stem in stems)]


needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (Debian package systemd; .ci/run installs it)",
)


@needs_analyze
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    proc = _verify(UNITS, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not _complaints(proc, UNITS), proc.stderr


@needs_analyze
def test_verify_reports_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: an unknown key and a bad value are reported."""
    broken = tmp_path / "src" / "imreactor-broken@.service"
    broken.parent.mkdir()
    text = (DEPLOY / "imreactor-msg@.service").read_text()
    broken.write_text(text.replace("Type=exec", "Type=bogus\nNoSuchKey=1"))
    proc = _verify([broken], tmp_path)
    complaints = _complaints(proc, [broken])
    assert any("NoSuchKey" in line for line in complaints), proc.stderr
    assert any("bogus" in line for line in complaints), proc.stderr
