"""``imreactor up`` as a user runs it: one process that starts the suite, serves, and stops.

Demo users on first start (not twice), a client logs in through login_server
and chats, ``--msg-servers 2`` adds a route_server, SIGINT stops every child
and exits 0; a port already taken fails the start with a clear message. The
whole suite serves a chat on every poller backend the machine has.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from imreactor.client import Client
from imreactor.client.tls import client_context
from imreactor.net.poller import ENV_VAR, available
from imreactor.pdu.proto import im_message_pb2 as msg_pb
from imreactor.redis import RedisProcess
from imreactor.redis.process import ping
from imreactor.servers.suite import DEMO_PASSWORD

from .conftest import free_port_run, free_ports


def start_up(
    data_dir: Path, *extra: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], list[int], str]:
    http, login, db, route = free_ports(4)
    msg = free_port_run(3)  # --msg-servers up to 3 take consecutive ports
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "imreactor",
            "up",
            "--data-dir",
            str(data_dir),
            "--http-port",
            str(http),
            "--login-port",
            str(login),
            "--db-port",
            str(db),
            "--route-port",
            str(route),
            "--msg-port",
            str(msg),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    out = ""
    deadline = time.monotonic() + 60
    while "Ctrl-C stops everything" not in out:
        assert time.monotonic() < deadline and proc.poll() is None, out
        # os.read, not readline: a buffered reader would hide lines from select().
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            out += os.read(fd, 65536).decode()
    return proc, [http, msg], out


def stop_up(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, rest
    return rest


def login(http: int, name: str) -> Client:
    deadline = time.monotonic() + 15
    while True:
        try:
            c = Client.via_login_server(f"http://127.0.0.1:{http}")
        except Exception:
            c = None
        if c is not None:
            if c.login(name, DEMO_PASSWORD, check=False).result_code == 0:
                return c
            c.close()
        assert time.monotonic() < deadline, f"{name} could not log in"
        time.sleep(0.2)


@pytest.mark.parametrize("msg_servers", [1, 2])
def test_up_serves_a_chat_and_stops_cleanly(tmp_path: Path, msg_servers: int) -> None:
    proc, (http, _msg), out = start_up(tmp_path, "--msg-servers", str(msg_servers))
    try:
        assert "created demo users alice, bob, carol, dave" in out
        assert f"http://127.0.0.1:{http}/msg_server" in out
        alice, bob = login(http, "alice"), login(http, "bob")
        ack = alice.send_text(bob.user_id, "over the suite")
        got = bob.wait_for(msg_pb.IMMsgData, 10)
        assert (got.msg_id, got.msg_data) == (ack.msg_id, b"over the suite")
        alice.close()
        bob.close()
        if msg_servers == 2:
            assert (tmp_path / "route_server.toml").exists()
            assert "route_server" in (tmp_path / "msg_server1.toml").read_text() or (
                "route_servers" in (tmp_path / "msg_server1.toml").read_text()
            )
    finally:
        rest = stop_up(proc)
    assert "imreactor suite stopped" in rest
    # Every child is gone: the ports are free again.
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", http))
    s.close()


def test_up_tls_prints_the_ca_that_clients_verify_with(tmp_path: Path) -> None:
    tls = free_port_run(1)
    proc, (http, _msg), out = start_up(tmp_path, "--tls", "--tls-port", str(tls))
    try:
        ca = tmp_path / "pki" / "clients-ca.pem"
        assert f"over TLS     127.0.0.1:{tls} (clients trust {ca})" in out
        assert f"--ca {ca}" in out
        with Client.via_login_server(f"http://127.0.0.1:{http}", ssl=client_context(ca)) as alice:
            assert alice.port == tls
            alice.login("alice", DEMO_PASSWORD)
            bob = login(http, "bob")
            ack = alice.send_text(bob.user_id, "sealed")
            got = bob.wait_for(msg_pb.IMMsgData, 10)
            assert (got.msg_id, got.msg_data) == (ack.msg_id, b"sealed")
            bob.close()
    finally:
        stop_up(proc)


@pytest.mark.parametrize("backend", available())
def test_the_suite_serves_on_every_poller_backend(
    tmp_path: Path, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The reactor tests run once per backend; this runs every server of the suite on
    # each, with clients on the same one: logins through login_server (which spreads
    # them over two msg_servers and their route_server), 1:1 messages both ways with
    # contiguous ids, a group message to two members, history.
    monkeypatch.setenv(ENV_VAR, backend)
    proc, (http, _msg), _out = start_up(
        tmp_path, "--msg-servers", "2", env={**os.environ, ENV_VAR: backend}
    )
    try:
        for log in sorted(tmp_path.glob("*.log")):
            assert f"({backend} poller)" in log.read_text(), log.name
        alice, bob, carol = login(http, "alice"), login(http, "bob"), login(http, "carol")
        ack = alice.send_text(bob.user_id, "hello from alice")
        got = bob.wait_for(msg_pb.IMMsgData, 10)
        assert (got.from_user_id, got.msg_id, got.msg_data) == (
            alice.user_id,
            ack.msg_id,
            b"hello from alice",
        )
        reply = bob.send_text(alice.user_id, "hello from bob")
        assert alice.wait_for(msg_pb.IMMsgData, 10).msg_id == reply.msg_id == ack.msg_id + 1
        group = alice.create_group("on " + backend, [bob.user_id, carol.user_id])
        sent = alice.send_group_text(group.group_id, "to the group")
        for member in (bob, carol):
            pushed = member.wait_for(msg_pb.IMMsgData, 10)
            assert (pushed.to_session_id, pushed.msg_id) == (group.group_id, sent.msg_id)
        history = carol.history(alice.user_id)
        assert [m.msg_id for m in history.msg_list] == []
        assert sorted(m.msg_id for m in bob.history(alice.user_id).msg_list) == [
            ack.msg_id,
            reply.msg_id,
        ]
        for c in (alice, bob, carol):
            c.close()
    finally:
        stop_up(proc)


def test_second_start_keeps_the_data_and_creates_no_users(tmp_path: Path) -> None:
    proc, (http, _), _out = start_up(tmp_path)
    alice, bob = login(http, "alice"), login(http, "bob")
    first = alice.send_text(bob.user_id, "kept").msg_id
    alice_id = alice.user_id
    alice.close()
    bob.close()
    stop_up(proc)
    proc, (http, _), out = start_up(tmp_path)
    try:
        assert "created demo users" not in out
        bob = login(http, "bob")
        assert [m.msg_id for m in bob.history(alice_id).msg_list] == [first]
        bob.close()
    finally:
        stop_up(proc)


def test_port_in_use_fails_the_start_clearly(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "imreactor",
                "up",
                "--data-dir",
                str(tmp_path),
                "--http-port",
                str(port),
                "--login-port",
                str(free_ports(1)[0]),
                "--db-port",
                str(free_ports(1)[0]),
                "--msg-port",
                str(free_ports(1)[0]),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        taken.close()
    assert proc.returncode != 0
    assert "login_server did not start" in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "args,expect",
    [
        (["--msg-servers", "0"], "give 1..64"),
        (["--http-port", "70000"], "is not a port"),
        (["--db-port", "x"], "invalid"),
    ],
)
def test_bad_options_are_refused(tmp_path: Path, args: list[str], expect: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "imreactor", "up", "--data-dir", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2 and expect in proc.stderr, proc.stderr
    assert not (tmp_path / "imreactor.db").exists()  # nothing was started or created


@pytest.mark.parametrize("given", [False, True], ids=["private", "url"])
def test_up_with_redis_relays_through_it(tmp_path: Path, given: bool, request: Any) -> None:
    extra = ["--msg-servers", "2", "--redis"]
    if given:
        redis: RedisProcess = request.getfixturevalue("redis_server")
        extra.append(redis.url)
    proc, (http, _msg), out = start_up(tmp_path / "data", *extra)
    try:
        assert not (tmp_path / "data" / "route_server.toml").exists()
        assert "redis = " in (tmp_path / "data" / "msg_server1.toml").read_text()
        alice, bob = login(http, "alice"), login(http, "bob")
        ack = alice.send_text(bob.user_id, "over redis")
        got = bob.wait_for(msg_pb.IMMsgData, 10)
        assert (got.msg_id, got.msg_data) == (ack.msg_id, b"over redis")
        alice.close()
        bob.close()
    finally:
        stop_up(proc)
    if not given:
        conf = (tmp_path / "data" / "redis" / "redis.conf").read_text()
        port = int(conf.split("\nport ")[1].split()[0])
        assert f"private redis-server at redis://127.0.0.1:{port}/0" in out
        assert not ping(port), "the private redis-server outlived imreactor up"


def test_up_refuses_a_bad_redis_url(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "imreactor", "up", "--data-dir", str(tmp_path), "--redis", "x://y"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode != 0 and "not redis://" in proc.stderr, proc.stderr
    assert not (tmp_path / "imreactor.db").exists()
