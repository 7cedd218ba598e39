"""Configuration: TOML loading, ``imreactor config defaults|check``, and docs/configuration.md.

The CLI runs as a real process on real files. The documentation test reads the key tables
of docs/configuration.md itself and compares them with the dataclasses, so it fails when
either changes without the other.
"""

from __future__ import annotations

import dataclasses
import math
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imreactor.config import ConfigError, describe, dump, load, option, toml_value
from imreactor.servers.confimport import ROLES
from imreactor.servers.msg.config import MsgConfig
from imreactor.servers.suite import SuiteLayout

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "configuration.md"


def imreactor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imreactor", *args], capture_output=True, text=True, timeout=60
    )


def defaults_of(cls: type[Any]) -> dict[str, Any]:
    return dataclasses.asdict(cls())


# -- TOML values ---------------------------------------------------------------------------


@given(st.text())
def test_any_string_round_trips_through_toml(text: str) -> None:
    assert tomllib.loads(f"x = {toml_value(text)}")["x"] == text


@given(st.floats() | st.integers(-(2**63), 2**63 - 1) | st.booleans())
def test_numbers_round_trip_through_toml(value: float | int | bool) -> None:
    back = tomllib.loads(f"x = {toml_value(value)}")["x"]
    if isinstance(value, float) and math.isnan(value):
        assert math.isnan(back)
    else:
        assert back == value and type(back) is type(value)


def test_values_without_a_toml_form_are_refused() -> None:
    with pytest.raises(TypeError):
        toml_value({"a": None})
    with pytest.raises(TypeError):
        toml_value(None)


def test_tables_are_inline_tables() -> None:
    table = {"imreactor.servers.msg": "debug", 'odd "key"': "info"}
    assert tomllib.loads(f"x = {toml_value(table)}")["x"] == table
    assert tomllib.loads(f"x = {toml_value({})}")["x"] == {}


@dataclasses.dataclass
class Awkward:
    text: str = option('quote " backslash \\ newline \n tab \t nul \x00', "line one\nline two")
    unset: str | None = option(None, "nothing by default")
    delays_s: list[float] = option([0.5, 1], "a list")  # noqa: RUF009 - a field() factory


def test_describe_is_toml_that_load_reads_back_as_the_defaults(tmp_path: Path) -> None:
    text = describe(Awkward, "odd")
    assert "# line one\n# line two\n" in text
    assert "# unset = (unset by default)" in text
    path = tmp_path / "odd.toml"
    path.write_text(text)
    assert load(Awkward, path, "odd") == Awkward()
    for role, cls in ROLES.items():
        path.write_text(describe(cls, role))
        assert load(cls, path, role) == cls()


# -- load: what a server accepts ------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_load_reads_the_table_and_keeps_other_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, '[msg]\nport = 9000\nlogin_timeout_s = 3\n[login]\nhttp_port = "x"\n')
    config = load(MsgConfig, path, "msg")
    assert config.port == 9000
    assert config.login_timeout_s == 3.0 and isinstance(config.login_timeout_s, float)
    assert dataclasses.replace(config, port=8000, login_timeout_s=15.0) == MsgConfig()
    assert load(MsgConfig, None, "msg") == MsgConfig()
    assert load(MsgConfig, write(tmp_path, "[login]\n"), "msg") == MsgConfig()


@pytest.mark.parametrize(
    "text,message",
    [
        ("[msg\nport = 1\n", "c.toml: Expected ']'"),
        ("[msg]\nport = \n", "c.toml: Invalid value"),
        ("[msg]\nprot = 1\n", "unknown key(s) msg.prot"),
        ("[msg]\nport = 1\nzz = 2\naa = 3\n", "unknown key(s) msg.aa, msg.zz"),
        ('[msg]\nport = "8000"\n', "msg.port: expected int, got '8000'"),
        ("[msg]\nport = true\n", "msg.port: expected int, got True"),
        ("[msg]\nlogin_timeout_s = true\n", "msg.login_timeout_s: expected float, got True"),
        ('[msg]\ndb_proxies = "a:1"\n', "msg.db_proxies: expected a list, got 'a:1'"),
        ("[msg]\ndb_proxies = [1]\n", "msg.db_proxies[0]: expected str, got 1"),
        ("msg = 3\n", "[msg] must be a table"),
        (
            '[msg]\npresence = "everyone"\n',
            'msg.presence: must be "subscribed" or "broadcast", got \'everyone\'',
        ),
        ("[msg]\npresence = 1\n", "msg.presence: expected str, got 1"),
        ("[msg]\nmax_subscriptions = -1\n", "msg.max_subscriptions: must be at least 0, got -1"),
        ('[msg]\nmax_subscriptions = "all"\n', "msg.max_subscriptions: expected int"),
    ],
)
def test_load_refuses_with_the_key_named(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(MsgConfig, write(tmp_path, text), "msg")
    assert message in str(err.value)


def test_load_of_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read .*nope\.toml: No such file"):
        load(MsgConfig, tmp_path / "nope.toml", "msg")


# -- imreactor config defaults / check -----------------------------------------------------


def test_config_defaults_prints_every_role_as_loadable_toml(tmp_path: Path) -> None:
    res = imreactor("config", "defaults")
    assert res.returncode == 0, res.stderr
    doc = tomllib.loads(res.stdout)
    assert list(doc) == list(ROLES)
    path = write(tmp_path, res.stdout)
    for role, cls in ROLES.items():
        assert doc[role] == defaults_of(cls)
        assert load(cls, path, role) == cls()
        for f in dataclasses.fields(cls):
            assert f"# {f.metadata['doc']}\n{f.name} = " in res.stdout

    one = imreactor("config", "defaults", "dbproxy")
    assert one.returncode == 0, one.stderr
    assert list(tomllib.loads(one.stdout)) == ["dbproxy"]


def test_config_defaults_of_an_unknown_role() -> None:
    res = imreactor("config", "defaults", "route66")
    assert res.returncode == 2 and res.stdout == ""
    assert "invalid choice: 'route66'" in res.stderr
    assert "Traceback" not in res.stderr


def test_config_check_accepts_what_the_servers_accept(tmp_path: Path) -> None:
    path = write(tmp_path, dump({"msg": {"port": 9000}, "dbproxy": {"threads": 2}}))
    res = imreactor("config", "check", str(path), "--role", "msg")
    assert (res.returncode, res.stdout) == (0, f"{path}: ok ([msg], [dbproxy])\n"), res.stderr
    empty = write(tmp_path, "")
    res = imreactor("config", "check", str(empty))
    assert (res.returncode, res.stdout) == (0, f"{empty}: ok (empty: all defaults)\n")


@pytest.mark.parametrize(
    "text,args,message",
    [
        ("[msg\n", [], "Expected ']'"),
        ("[msg]\nprot = 1\n", [], "unknown key(s) msg.prot"),
        ('[login]\nhttp_port = "80"\n', [], "login.http_port: expected int, got '80'"),
        ("[dbproxy]\nhash_threads = 0\n", [], "dbproxy.hash_threads: must be at least 1, got 0"),
        (
            "[dbproxy]\ncredential_cache_ttl_s = -1\n",
            [],
            "dbproxy.credential_cache_ttl_s: -1.0 seconds; a duration is never negative",
        ),
        ('[dbproxy]\nhash_max_pending = "x"\n', [], "dbproxy.hash_max_pending: expected int"),
        (
            "[dbproxy]\nstore_timeout_s = 0\n",
            [],
            "dbproxy.store_timeout_s: 0.0 seconds; must be more than 0",
        ),
        (
            "[msg]\nthrottle_account_lockout = 0\n",
            [],
            "msg.throttle_account_lockout: must be at least 1, got 0",
        ),
        (
            "[msg]\nthrottle_address_free = 30\nthrottle_address_lockout = 30\n",
            [],
            "msg.throttle_address_lockout: must be more than throttle_address_free (30), got 30",
        ),
        (
            "[msg]\nthrottle_max_delay_s = 1000.0\nthrottle_lockout_s = 10.0\n",
            [],
            "msg.throttle_max_delay_s: must be at most throttle_lockout_s (10.0), got 1000.0",
        ),
        ('[msg]\nthrottle_max_entries = "many"\n', [], "msg.throttle_max_entries: expected int"),
        (
            "[msg]\nthrottle_answer_delay_s = -1.0\n",
            [],
            "msg.throttle_answer_delay_s: -1.0 seconds; a duration is never negative",
        ),
        (
            "[route]\nmax_link_subscriptions = -1\n",
            [],
            "route.max_link_subscriptions: must be at least 0, got -1",
        ),
        ("[mgs]\nport = 1\n", [], "unknown table(s) or key(s) mgs"),
        ("port = 1\n", [], "unknown table(s) or key(s) port"),
        ("[[msg]]\nport = 1\n", [], "msg must be a table"),
        ("[login]\n", ["--role", "msg"], "no [msg] table"),
        ("[msg]\nport = 99999\n", [], "msg.port: 99999 is not a port (1..65535)"),
        ("[login]\nhttp_port = 0\n", [], "login.http_port: 0 is not a port (1..65535)"),
        ("[msg]\ntls_port = -1\n", [], "msg.tls_port: -1 is not a port (0..65535)"),
        ("[dbproxy]\nhttp_port = 70000\n", [], "dbproxy.http_port: 70000 is not a port (0..65535)"),
        ("[route]\nhttp_port = -1\n", [], "route.http_port: -1 is not a port (0..65535)"),
        ("[msg]\nhttp_port = 65536\n", [], "msg.http_port: 65536 is not a port (0..65535)"),
        (
            "[msg]\nclient_timeout_s = -5\n",
            [],
            "msg.client_timeout_s: -5.0 seconds; a duration is never negative",
        ),
        ("[msg]\nlogin_timeout_s = 0\n", [], "msg.login_timeout_s: 0.0 seconds; must be more"),
        (
            "[msg]\nreconnect_delays_s = [1.0, 0]\n",
            [],
            "msg.reconnect_delays_s: 0.0 seconds; must be more than 0",
        ),
        (
            '[msg]\nlogin_servers = ["nohost.invalid"]\n',
            [],
            "msg.login_servers[0]: 'nohost.invalid' does not resolve",
        ),
        ('[msg]\ndb_proxies = ["127.0.0.1:x"]\n', [], "msg.db_proxies[0]: '127.0.0.1:x' is not"),
        (
            '[msg]\nroute_servers = ["127.0.0.1:0"]\n',
            [],
            "msg.route_servers[0]: '127.0.0.1:0': port 0 cannot be connected to",
        ),
        ('[route]\nlisten_host = ""\n', [], "route.listen_host: empty"),
        ('[login]\nlisten_host = "999.1.1.1"\n', [], "login.listen_host: '999.1.1.1' does not"),
        (
            '[dbproxy]\ndatabase = "mysql://x"\n',
            [],
            "dbproxy.database: storage URL 'mysql://x': expected sqlite:///PATH or postgresql://",
        ),
        ('[dbproxy]\ndatabase = "sqlite:///"\n', [], "a SQLite database needs a file path"),
    ],
)
def test_config_check_refuses_with_one_line(
    tmp_path: Path, text: str, args: list[str], message: str
) -> None:
    path = write(tmp_path, text)
    res = imreactor("config", "check", str(path), *args)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.startswith(f"imreactor config check: {path}: ")
    assert message in res.stderr and res.stderr.count("\n") == 1, res.stderr


def test_config_check_accepts_every_file_imreactor_up_writes(tmp_path: Path) -> None:
    layout = SuiteLayout(data_dir=tmp_path, msg_ports=[9001, 9002], route_ports=[9100])
    paths = layout.write()
    assert sorted(paths) == [
        "db_proxy_server",
        "login_server",
        "msfs",
        "msg_server1",
        "msg_server2",
        "route_server",
    ]
    for name, path in paths.items():
        role = (
            "msfs"
            if name == "msfs"
            else {"db": "dbproxy", "lo": "login", "ms": "msg", "ro": "route"}[name[:2]]
        )
        res = imreactor("config", "check", str(path), "--role", role)
        assert (res.returncode, res.stdout) == (0, f"{path}: ok ([{role}])\n"), res.stderr


def test_config_check_of_files_that_cannot_be_read(tmp_path: Path) -> None:
    res = imreactor("config", "check", str(tmp_path / "none.toml"))
    assert res.returncode == 2
    assert (
        res.stderr
        == f"imreactor config check: {tmp_path / 'none.toml'}: No such file or directory\n"
    )
    res = imreactor("config", "check", str(tmp_path))
    assert res.returncode == 2 and res.stderr.endswith(": Is a directory\n")
    res = imreactor("config", "check", str(write(tmp_path, "[msg]\n")), "--role", "nope")
    assert res.returncode == 2 and "invalid choice: 'nope'" in res.stderr


# -- docs/configuration.md --------------------------------------------------------------------


def documented_keys() -> dict[str, list[tuple[str, str, str]]]:
    """``{role: [(key, default as TOML, meaning)]}`` from the tables of the page."""
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("<!-- keys:begin -->") : text.index("<!-- keys:end -->")]
    tables: dict[str, list[tuple[str, str, str]]] = {}
    role = ""
    for line in section.splitlines():
        heading = re.match(r"### `\[(\w+)\]`", line)
        if heading:
            role = heading.group(1)
            tables[role] = []
        elif line.startswith("| `"):
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            key, _type, default, meaning = cells
            tables[role].append((key.strip("`"), default, meaning))
    return tables


def test_the_documented_keys_are_the_dataclasses() -> None:
    documented = documented_keys()
    assert list(documented) == list(ROLES)
    for role, cls in ROLES.items():
        fields = dataclasses.fields(cls)
        assert [row[0] for row in documented[role]] == [f.name for f in fields], role
        defaults = defaults_of(cls)
        for (key, default, meaning), f in zip(documented[role], fields, strict=True):
            if defaults[key] is None:
                assert default == "(unset)", key
            else:
                value = tomllib.loads(f"v = {default.strip('`')}")["v"]
                assert value == defaults[key], f"[{role}] {key}: {default}"
            assert meaning == " ".join(f.metadata["doc"].split()), f"[{role}] {key}"


def test_the_generated_tables_are_current() -> None:
    res = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_config_doc.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
