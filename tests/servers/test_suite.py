"""``imreactor up`` as a user runs it: one process that starts the suite, serves, and stops.

Demo users on first start (not twice), a client logs in through login_server
and chats, ``--msg-servers 2`` adds a route_server, SIGINT stops every child
and exits 0; a port already taken fails the start with a clear message. The
whole suite serves a chat on every poller backend the machine has.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from wsclient import WsClient

from imreactor.client import Client
from imreactor.client.tls import client_context
from imreactor.config import dump
from imreactor.net.poller import ENV_VAR, available
from imreactor.pdu.proto import im_message_pb2 as msg_pb
from imreactor.redis import RedisProcess
from imreactor.redis.process import ping
from imreactor.servers.suite import (
    DEMO_PASSWORD,
    Child,
    SuiteLayout,
    start_child,
    stop_children,
)

from .conftest import free_port_run, free_ports, scrape
from .test_websocket import _port_of, _ws_login


def start_up(
    data_dir: Path, *extra: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], list[int], str]:
    http, login, db, route, msfs = free_ports(5)
    msg = free_port_run(3)  # --msg-servers up to 3 take consecutive ports
    metrics = free_port_run(5)  # db_proxy, route_server, 3 msg_servers
    ws = free_port_run(3)
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
            "--metrics-port",
            str(metrics),
            "--msfs-port",
            str(msfs),
            "--ws-port",
            str(ws),
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
        assert f"  dashboard    http://127.0.0.1:{http}/dashboard\n" in out
        assert f"  web chat     http://127.0.0.1:{http}/  " in out
        alice, bob = login(http, "alice"), login(http, "bob")
        ack = alice.send_text(bob.user_id, "over the suite")
        got = bob.wait_for(msg_pb.IMMsgData, 10)
        assert (got.msg_id, got.msg_data) == (ack.msg_id, b"over the suite")
        # Browsers are offered a WebSocket URL, and one logs in over it.
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/msg_server", timeout=10) as rsp:
            ws_url = json.loads(rsp.read())["wsURL"]
        assert f"  browsers     ws://127.0.0.1:{_port_of(ws_url)}/" in out
        browser = WsClient(_port_of(ws_url))
        assert _ws_login(browser, "carol").result_code == 0
        browser.close()
        # The dashboard the banner names lists every msg_server.
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/dashboard/data", timeout=10) as rsp:
            assert json.loads(rsp.read())["cluster"]["msg_servers"] == msg_servers
        alice.close()
        bob.close()
        # Every server's metrics URL is in the banner, and each serves its own role's
        # series, the loop's and the process's, with /healthz and /readyz beside it.
        urls = re.findall(r"metrics      (\S+)  \((\w+)\)", out)
        expected = {"db_proxy_server", "login_server", "msfs", *(
            ["msg_server"] if msg_servers == 1 else ["route_server", "msg_server1", "msg_server2"]
        )}  # fmt: skip
        assert {name for _, name in urls} == expected
        for url, name in urls:
            metrics = scrape(url)
            assert metrics[("imreactor_loop_iterations_total", ())] > 0, name
            assert metrics[("process_resident_memory_bytes", ())] > 0, name
            base = url.removesuffix("/metrics")
            with urllib.request.urlopen(base + "/readyz", timeout=5) as rsp:
                assert json.loads(rsp.read())["ready"] is True, name
            with urllib.request.urlopen(base + "/healthz", timeout=5) as rsp:
                assert rsp.read() == b"ok\n"
        msg_url = dict((n, u) for u, n in urls)["msg_server" if msg_servers == 1 else "msg_server1"]
        db_url = dict((n, u) for u, n in urls)["db_proxy_server"]
        logins = sum(
            v for (k, labels), v in scrape(msg_url).items()
            if k == "imreactor_msg_logins_total" and labels == (("result", "ok"),)
        )  # fmt: skip
        assert logins >= 1
        assert scrape(db_url)[("imreactor_db_messages_stored_total", ())] >= 1
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


def test_port_in_use_is_named_before_anything_is_written(tmp_path: Path) -> None:
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
                "--metrics-port",
                str(free_port_run(2)),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        taken.close()
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"port {port} (login_server http_port) on 127.0.0.1: already in use" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["up.lock"]  # no config, log or db


def children_of(pid: int) -> dict[str, int]:
    """The server role → pid of each child of ``pid`` (Linux /proc)."""
    found = {}
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        found[cmdline[3].decode()] = int(child)  # python -m imreactor <role> -c FILE
    return found


def is_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_a_second_up_in_the_same_dir_is_refused_and_touches_nothing(tmp_path: Path) -> None:
    proc, (http, _), _out = start_up(tmp_path)
    try:
        before = {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in tmp_path.iterdir()}
        second = subprocess.run(
            [sys.executable, "-m", "imreactor", "up", "--data-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 2
        assert f"a suite is already running in {tmp_path} (pid {proc.pid})" in second.stderr
        after = {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in tmp_path.iterdir()}
        assert {k: v for k, v in after.items() if not k.endswith(".log")} == {
            k: v for k, v in before.items() if not k.endswith(".log")
        }
        login(http, "alice").close()  # the first suite never noticed
    finally:
        stop_up(proc)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_servers_die_with_up_even_after_kill_9(tmp_path: Path) -> None:
    proc, _ports, _out = start_up(tmp_path)
    servers = children_of(proc.pid)
    assert set(servers) == {"db-proxy-server", "login-server", "msg-server", "msfs"}
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 20
    while any(is_alive(pid) for pid in servers.values()):
        assert time.monotonic() < deadline, "servers outlived up"
        time.sleep(0.1)


def test_a_crashed_server_is_restarted_and_logged(tmp_path: Path) -> None:
    proc, (http, _), _out = start_up(tmp_path)
    try:
        alice = login(http, "alice")
        alice.close()
        os.kill(children_of(proc.pid)["msg-server"], signal.SIGKILL)
        assert proc.stdout is not None
        out = ""
        deadline = time.monotonic() + 30
        while "msg_server restarted" not in out:
            assert time.monotonic() < deadline and proc.poll() is None, out
            ready, _, _ = select.select([proc.stdout.fileno()], [], [], 0.5)
            if ready:
                out += os.read(proc.stdout.fileno(), 65536).decode()
        assert "msg_server exited with -9" in out and "restarting it in 1 s (restart 1)" in out
        bob = login(http, "bob")  # served again
        bob.close()
    finally:
        stop_up(proc)


@pytest.mark.parametrize(
    "args,expect",
    [
        (["--msg-servers", "0"], "give 1..64"),
        (["--http-port", "70000"], "is not a port"),
        (["--metrics-port", "0"], "is not a port (1..65535)"),
        (["--ws-port", "70000"], "is not a port (0..65535)"),
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


def test_up_starts_msfs_and_login_server_hands_out_its_url(tmp_path: Path) -> None:
    # What a TeamTalk client does for a picture: ask login_server, POST the image to
    # msfsPrior, put the url in a message; the receiver GETs it.
    proc, (http, _msg), out = start_up(tmp_path)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/msg_server", timeout=10) as rsp:
            answer = json.loads(rsp.read())
        msfs_port = int((tmp_path / "msfs.toml").read_text().split("port = ")[1].split()[0])
        expected = SuiteLayout(data_dir=tmp_path, msfs_port=msfs_port).msfs_url
        assert answer["msfsPrior"] == answer["msfsBackup"] == expected
        assert f"images       {expected} (msfs)" in out
        image = b"GIF89a" + bytes(range(256))
        boundary = "b0undary"
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="f"; filename="x.gif"\r\n'
                f"Content-Type: image/gif\r\n\r\n"
            ).encode()
            + image
            + f"\r\n--{boundary}--\r\n".encode()
        )
        request = urllib.request.Request(
            answer["msfsPrior"],
            body,
            {"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        with urllib.request.urlopen(request, timeout=10) as rsp:
            stored = json.loads(rsp.read())
        assert stored["error_code"] == 0
        with urllib.request.urlopen(stored["url"], timeout=10) as rsp:
            assert rsp.read() == image
        assert (tmp_path / "msfs" / stored["path"]).read_bytes() == image
    finally:
        stop_up(proc)


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


def test_a_server_started_from_a_short_lived_thread_outlives_the_thread(tmp_path: Path) -> None:
    # Linux sends PR_SET_PDEATHSIG when the forking *thread* ends: a restart from a
    # supervisor's timer or a test's fault thread must not die with that thread.
    (port,) = free_ports(1)
    config = tmp_path / "route.toml"
    config.write_text(dump({"route": {"port": port}}))
    started: list[Child] = []
    thread = threading.Thread(
        target=lambda: started.append(start_child("route_server", "route-server", config, tmp_path))
    )
    thread.start()
    thread.join()
    try:
        time.sleep(0.5)  # a death signal, if one were armed to the thread, has come by now
        assert started and started[0].proc.poll() is None, "the server died with its thread"
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    finally:
        stop_children(started)
