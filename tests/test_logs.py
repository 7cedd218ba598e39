"""imreactor.logs: JSON lines from real server processes, levels per module, floods told
once, and the refusal of malformed log settings by ``config check`` and the command line.

The formatter and the burst limiter are also tested in this process (the limiter on a
fake clock); everything else runs real servers and reads the logs they write.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from servers.conftest import RunningSuite, start_suite
from test_admin import imreactor, up_suite

from imreactor import logs
from imreactor.client import Client
from imreactor.net.testing import FakeClock
from imreactor.servers.suite import DEMO_PASSWORD

WAIT_S = 20.0


def wait_for(what: str, check: Callable[[], Any]) -> Any:
    """``check()`` once it is truthy (polled up to WAIT_S), else fail naming ``what``."""
    deadline = time.monotonic() + WAIT_S
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            assert result, what
            return result
        time.sleep(0.1)


def json_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of a log file, each of which must be one JSON object."""
    records = []
    for line in path.read_text().splitlines():
        record = json.loads(line)  # fails the test on any line that is not JSON
        assert isinstance(record, dict), line
        records.append(record)
    return records


# -- in this process --------------------------------------------------------------------------


def test_json_formatter_fields_ids_and_tracebacks() -> None:
    out = io.StringIO()
    logs.configure("msg_server", logs.Settings(fmt="json"), stream=out)
    try:
        log = logging.getLogger("imreactor.servers.msg.sessions")
        log.info("user %d logged in\nsecond line", 7, extra=logs.ids(conn=3, user=7, msg=0))
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.exception("it failed")
    finally:
        logs.configure("test", logs.Settings())
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert set(first) == {"time", "level", "role", "logger", "message", "conn_id", "user_id"}
    assert first["level"] == "INFO" and first["role"] == "msg_server"
    assert first["logger"] == "imreactor.servers.msg.sessions"
    assert first["message"] == "user 7 logged in\nsecond line"
    assert (first["conn_id"], first["user_id"]) == (3, 7)  # msg 0: none, left out
    assert first["time"].endswith("Z") and len(first["time"]) == len("2026-01-01T00:00:00.000Z")
    assert second["level"] == "ERROR" and "RuntimeError: boom" in second["exc"]


class Loop:
    """A loop's clock and timers, as RateLimitedLog uses them."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.timers: list[tuple[float, Callable[..., Any], tuple[Any, ...]]] = []

    def time(self) -> float:
        return self.clock()

    def call_later(self, delay_s: float, callback: Callable[..., Any], *args: Any) -> None:
        self.timers.append((self.clock() + delay_s, callback, args))

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        due = [t for t in self.timers if t[0] <= self.clock()]
        self.timers = [t for t in self.timers if t[0] > self.clock()]
        for _, callback, args in due:
            callback(*args)


def test_a_flood_is_one_line_then_one_count(caplog: pytest.LogCaptureFixture) -> None:
    loop, other = Loop(), Loop()
    limiter = logs.RateLimitedLog(logging.getLogger("test.flood"), window_s=5.0)
    with caplog.at_level(logging.INFO, logger="test.flood"):
        assert limiter.log(loop, "late answer X", "late answer from %s", "peer1")
        for i in range(200):
            assert not limiter.log(loop, "late answer X", "late answer from %s", f"peer{i}")
        assert limiter.log(loop, "other kind", "another kind")  # its own window
        assert limiter.log(other, "late answer X", "on another loop")  # loops apart
        assert len(caplog.records) == 3
        loop.advance(4.9)
        assert len(caplog.records) == 3
        loop.advance(0.2)  # the window ends: one line with the count
        assert [r.getMessage() for r in caplog.records[3:]] == [
            "late answer X: 200 more in the last 5 s, not logged"
        ]
        assert limiter.log(loop, "late answer X", "late again")  # a new window
    first = caplog.records[0].getMessage()
    assert first == "late answer from peer1 (more like it in the next 5 s are counted, not logged)"
    assert len(caplog.records) == 5


def test_level_options_and_their_refusals() -> None:
    assert logs.parse_level_option("DEBUG") == ("", "debug")
    assert logs.parse_level_option("imreactor.servers.msg=Warning") == (
        "imreactor.servers.msg",
        "warning",
    )
    for text, why in [
        ("loud", "'loud' is not a level"),
        ("=debug", "no module before '='"),
        ("imreactor.servers.msgg=debug", "imreactor has no such module"),
        ("a..b=info", "'a..b': not a module name"),
        ("imreactor.servers.msg=", "'' is not a level"),
    ]:
        with pytest.raises(ValueError, match=why):
            logs.parse_level_option(text)


# -- real processes ---------------------------------------------------------------------------

JSON_EVERYWHERE = {
    role: {"log_format": "json"} for role in ("dbproxy", "route", "msfs", "login", "msg")
}


@pytest.fixture
def json_suite(tmp_path: Path) -> Any:
    overrides: dict[str, dict[str, Any]] = {r: dict(k) for r, k in JSON_EVERYWHERE.items()}
    overrides["msg"]["log_levels"] = {"imreactor.servers.msg": "debug"}
    suite = start_suite(tmp_path / "data", f"sqlite:///{tmp_path / 'im.db'}", overrides=overrides)
    yield suite
    suite.stop()


def test_json_lines_from_real_servers_carry_role_and_ids(json_suite: RunningSuite) -> None:
    alice = json_suite.login("alice")
    bob = json_suite.login("bob")
    ack = alice.send_text(bob.user_id, "hello in json")
    alice.close()
    path = json_suite.layout.data_dir / "msg_server.log"

    def stored_line() -> list[dict[str, Any]]:
        return [r for r in json_lines(path) if r.get("msg_id") == ack.msg_id]

    [stored] = wait_for("a line naming the stored message", stored_line)
    assert stored["user_id"] == alice.user_id and isinstance(stored["conn_id"], int)
    assert stored["level"] == "DEBUG" and stored["role"] == "msg_server"
    assert stored["logger"] == "imreactor.servers.msg.delivery"
    records = json_lines(path)
    for record in records:
        assert {"time", "level", "role", "logger", "message"} <= set(record), record
    logins = [r for r in records if "logged in" in r["message"]]
    assert {r["user_id"] for r in logins} == {alice.user_id, bob.user_id}
    assert all(isinstance(r["conn_id"], int) for r in logins)
    assert len({r["conn_id"] for r in logins}) == 2  # one per connection
    wait_for(
        "alice's logout logged with her ids",
        lambda: any(
            "offline" in r["message"] and r.get("user_id") == alice.user_id
            for r in json_lines(path)
        ),
    )
    # Per-module levels: debug under imreactor.servers.msg only.
    debug = {r["logger"] for r in json_lines(path) if r["level"] == "DEBUG"}
    assert debug and all(name.startswith("imreactor.servers.msg") for name in debug), debug
    # The other servers write JSON too, under their own role, at info.
    for name, role in [("db_proxy_server", "db_proxy_server"), ("login_server", "login_server")]:
        other = json_lines(json_suite.layout.data_dir / f"{name}.log")
        assert other and {r["role"] for r in other} == {role}
        assert all(r["level"] != "DEBUG" for r in other)


def test_a_flood_of_throttled_logins_is_one_line_and_a_count(tmp_path: Path) -> None:
    throttle = {
        "throttle_account_free": 0,
        "throttle_delay_s": 60.0,
        "throttle_answer_delay_s": 0.0,
        "log_window_s": 1.0,
    }
    suite = start_suite(
        tmp_path / "data", f"sqlite:///{tmp_path / 'im.db'}", overrides={"msg": throttle}
    )
    try:
        suite.login("alice")  # the links are up
        first = suite.client()
        assert first.login("bob", "wrong", check=False).result_code == 6  # bob must wait now
        flood = 40
        for _ in range(flood):
            c = Client.connect("127.0.0.1", suite.layout.msg_ports[0])
            assert c.login("bob", DEMO_PASSWORD, check=False).result_code == 6
            c.close()
        summary = f"throttled logins: {flood - 1} more in the last 1 s, not logged"
        wait_for("the count of throttled logins", lambda: summary in suite.log_text("msg_server"))
        lines = suite.log_text("msg_server").splitlines()
        throttled = [line for line in lines if "throttled:" in line]
        assert len(throttled) == 1, throttled
        assert "login of 'bob' from 127.0.0.1 throttled: too many failed logins" in throttled[0]
        assert len([line for line in lines if summary in line]) == 1
    finally:
        suite.stop()


def test_up_passes_the_log_format_to_every_server(tmp_path: Path) -> None:
    with up_suite(tmp_path, "--log-format", "json", "--log-level", "warning") as (data, _):
        for name in ("db_proxy_server", "login_server", "msg_server", "msfs"):
            toml = (data / f"{name}.toml").read_text()
            assert 'log_format = "json"' in toml, name
            assert 'log_levels = {"imreactor" = "warning"}' in toml, name
        # At warning, a quiet start writes nothing; whatever was written is JSON.
        for name in ("db_proxy_server", "login_server", "msg_server"):
            assert all(r["level"] != "INFO" for r in json_lines(data / f"{name}.log"))


# -- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "says"),
    [
        ('log_format = "xml"', "msg.log_format: 'xml' is not a log format (give text or json)"),
        ("log_format = 1", "msg.log_format: expected str, got 1"),
        ('log_levels = "debug"', "msg.log_levels: expected a table, got 'debug'"),
        (
            'log_levels = {"imreactor.servers.msgg" = "debug"}',
            "msg.log_levels.imreactor.servers.msgg: imreactor has no such module",
        ),
        (
            'log_levels = {"imreactor.servers.msg" = "loud"}',
            "msg.log_levels.imreactor.servers.msg: 'loud' is not a level",
        ),
        ('log_levels = {"a..b" = "info"}', "msg.log_levels.a..b: not a module name"),
        ('log_levels = {"imreactor" = 3}', "msg.log_levels.imreactor: expected str, got 3"),
        ("log_window_s = -1", "msg.log_window_s: -1.0 seconds; a duration is never negative"),
    ],
)
def test_config_check_refuses_bad_log_settings(tmp_path: Path, table: str, says: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(f"[msg]\n{table}\n")
    res = imreactor("config", "check", str(path))
    assert res.returncode == 2, res
    assert "Traceback" not in res.stderr
    [line] = res.stderr.strip().splitlines()
    assert line.startswith(f"imreactor config check: {path}: {says}"), line
    # A server given the file refuses it the same way, before it starts.
    res = imreactor("msg-server", "-c", str(path))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.startswith(f"imreactor msg_server: {says}"), res.stderr


def test_good_log_settings_pass_config_check(tmp_path: Path) -> None:
    path = tmp_path / "good.toml"
    path.write_text(
        '[login]\nlog_format = "json"\nlog_levels = {"imreactor.pdu" = "WARNING"}\n'
        '[msfs]\nlog_levels = {"some.library" = "error"}\nlog_window_s = 0\n'
    )
    res = imreactor("config", "check", str(path))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"{path}: ok ([login], [msfs])"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--log-format", "xml", "config", "defaults"), "invalid choice: 'xml'"),
        (("config", "defaults", "--log-format", "yaml"), "invalid choice: 'yaml'"),
        (("--log-level", "loud", "config", "defaults"), "'loud' is not a level"),
        (("--log-level", "imreactor.nope=debug", "config", "defaults"), "no such module"),
    ],
)
def test_bad_log_options_are_usage_errors(args: tuple[str, ...], says: str) -> None:
    res = imreactor(*args)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert says in res.stderr.strip().splitlines()[-1], res.stderr
