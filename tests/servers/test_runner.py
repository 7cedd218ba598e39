"""Every server command refuses a bad configuration with one line and exit status 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROLES = [
    ("login-server", "login", "http_port"),
    ("msg-server", "msg", "port"),
    ("db-proxy-server", "dbproxy", "port"),
    ("route-server", "route", "port"),
    ("msfs", "msfs", "port"),
]


@pytest.mark.parametrize("command,section,key", ROLES)
@pytest.mark.parametrize(
    "text,expect",
    [
        ('[{section}]\n{key} = "not a number"\n', "expected int"),
        ("[{section}]\nno_such_key = 1\n", "unknown key"),
        ("[{section}\n", "Expected"),
    ],
)
def test_bad_config_is_one_line_and_exit_2(
    tmp_path: Path, command: str, section: str, key: str, text: str, expect: str
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text.format(section=section, key=key))
    proc = subprocess.run(
        [sys.executable, "-m", "imreactor", command, "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expect in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
