"""Listening and accepting on every backend: a burst of 200 clients all served, IPv4 and
IPv6 listeners on one port, host names and port 0, SO_REUSEPORT, a failing protocol
factory, closing a listener, and EMFILE on accept (in a subprocess with a lowered fd
limit): logged, no busy loop, accepting again once fds are free."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import textwrap

import pytest

from imreactor.net import ConnState, EventLoop, bind_sockets
from imreactor.net.acceptor import ACCEPT_RETRY_DELAY_S

from .helpers import DEADLINE_S, Collect, Echo, RunUntil, client, recv_exactly, roundtrip

pytestmark = pytest.mark.timeout(60)


def _has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback (::1) here")


def test_a_burst_of_200_clients_is_served(loop: EventLoop, run_until: RunUntil) -> None:
    accepted = Collect(Echo)
    server = loop.listen("127.0.0.1", 0, accepted)
    clients = []
    try:
        # All connect before the loop runs once: they wait together in the backlog.
        for i in range(200):
            sock = client(server.port)
            sock.sendall(b"%03d" % i)
            clients.append(sock)
        run_until(lambda: len(accepted) == 200 and all(p.received for p in accepted.made))
        for i, sock in enumerate(clients):
            assert recv_exactly(sock, 3) == b"%03d" % i
        assert server.listeners[0].accepted == 200
    finally:
        for sock in clients:
            sock.close()
    run_until(lambda: all(p.lost for p in accepted.made))


@needs_ipv6
def test_ipv4_and_ipv6_on_one_port(loop: EventLoop, run_until: RunUntil) -> None:
    server = loop.listen(["127.0.0.1", "::1"], 0, Echo)
    families = sorted(listener.sock.family for listener in server.listeners)
    assert families == sorted([socket.AF_INET, socket.AF_INET6])
    ports = {address[1] for address in server.addresses}
    assert ports == {server.port}, "port 0: every address gets the first one's port"
    for host in ("127.0.0.1", "::1"):
        with client(server.port, host) as sock:
            assert roundtrip(loop, sock, host.encode()) == host.encode()
    v6 = next(li for li in server.listeners if li.sock.family == socket.AF_INET6)
    assert v6.sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)


def test_every_interface_and_host_names(loop: EventLoop) -> None:
    anywhere = loop.listen(None, 0, Echo)
    hosts = {address[0] for address in anywhere.addresses}
    assert hosts & {"0.0.0.0", "::"}, hosts
    with client(anywhere.port) as sock:
        assert roundtrip(loop, sock, b"any") == b"any"

    named = loop.listen("localhost", 0, Echo)
    assert named.port != 0
    for address in named.addresses:
        with client(named.port, address[0]) as sock:
            assert roundtrip(loop, sock, b"localhost") == b"localhost"


def test_reuse_port(loop: EventLoop) -> None:
    if not hasattr(socket, "SO_REUSEPORT"):
        pytest.skip("no SO_REUSEPORT on this OS")
    first = loop.listen("127.0.0.1", 0, Echo, reuse_port=True)
    second = loop.listen("127.0.0.1", first.port, Echo, reuse_port=True)
    for server in (first, second):
        assert server.listeners[0].sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
    with client(first.port) as sock:
        assert roundtrip(loop, sock, b"either") == b"either"
    with pytest.raises(OSError):
        loop.listen("127.0.0.1", first.port, Echo)  # without the option: address in use


def test_bind_sockets_sets_reuseaddr_and_nonblocking() -> None:
    sockets = bind_sockets("127.0.0.1", 0, backlog=8)
    try:
        assert len(sockets) == 1
        sock = sockets[0]
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        assert not sock.getblocking()
    finally:
        for sock in sockets:
            sock.close()
    with pytest.raises(socket.gaierror):
        bind_sockets("no-such-host.invalid", 0)


def test_a_failing_factory_drops_only_that_connection(
    loop: EventLoop, run_until: RunUntil, caplog: pytest.LogCaptureFixture
) -> None:
    calls = [0]
    echoes: list[Echo] = []

    def factory() -> Echo:
        calls[0] += 1
        if calls[0] == 1:
            raise RuntimeError("factory bug")
        echoes.append(Echo())
        return echoes[-1]

    server = loop.listen("127.0.0.1", 0, factory)
    with caplog.at_level(logging.ERROR, logger="imreactor.net"), client(server.port) as dropped:
        run_until(lambda: calls[0] == 1)
        assert dropped.recv(10) == b""
    assert any("factory" in r.getMessage() for r in caplog.records)
    with client(server.port) as sock:
        assert roundtrip(loop, sock, b"next") == b"next"
    assert server.listeners[0].state is ConnState.LISTENING


def test_closing_a_listener_keeps_its_connections(loop: EventLoop, run_until: RunUntil) -> None:
    accepted = Collect(Echo)
    server = loop.listen("127.0.0.1", 0, accepted)
    port = server.port
    with client(port) as sock:
        run_until(lambda: len(accepted) == 1)
        server.close()
        server.close()  # idempotent
        assert server.addresses == []
        assert server.listeners[0].state is ConnState.CLOSED
        assert roundtrip(loop, sock, b"still here") == b"still here"
    with pytest.raises(ConnectionRefusedError):
        client(port).close()


_EMFILE_CHILD = textwrap.dedent(
    """
    import json, logging, os, resource, socket, sys, time

    from imreactor.net import EventLoop, Protocol

    backend, clients_n = sys.argv[1], int(sys.argv[2])
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logging.getLogger("imreactor.net").addHandler(Keep())
    logging.getLogger("imreactor.net").setLevel(logging.INFO)

    accepted = []

    class Hello(Protocol):
        def connection_made(self, conn):
            accepted.append(conn)
            conn.write(b"hi")

    loop = EventLoop(backend)
    server = loop.listen("127.0.0.1", 0, Hello)
    clients = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(clients_n)]

    # Few fds, then none: every accept() now fails with EMFILE.
    used = len(os.listdir("/proc/self/fd"))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (used + 16, hard))
    fillers = []
    while True:
        try:
            fillers.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            break

    iterations = [0]
    loop.add_loop_callback(lambda: iterations.__setitem__(0, iterations[0] + 1))
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        loop.run_once(end - time.monotonic())
    starved = {"iterations": iterations[0], "accepted": len(accepted), "log": list(records)}

    for fd in fillers:
        os.close(fd)
    end = time.monotonic() + 10.0
    while len(accepted) < clients_n and time.monotonic() < end:
        loop.run_once(0.05)
    greeted = 0
    for sock in clients:
        sock.settimeout(5)
        greeted += sock.recv(2) == b"hi"
    print(json.dumps({"starved": starved, "accepted": len(accepted), "greeted": greeted}))
    """
)


def test_emfile_on_accept_pauses_then_recovers(backend: str) -> None:
    # A subprocess, so that lowering RLIMIT_NOFILE cannot touch the test runner.
    if sys.platform != "linux":
        pytest.skip("counts open fds through /proc/self/fd")
    clients_n = 5
    proc = subprocess.run(
        [sys.executable, "-c", _EMFILE_CHILD, backend, str(clients_n)],
        capture_output=True,
        text=True,
        timeout=DEADLINE_S * 3,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    starved = result["starved"]
    assert starved["accepted"] == 0, "no fd, no connection"
    assert any("accept" in line and "failed" in line for line in starved["log"]), starved["log"]
    # Level-triggered polling of a listener it cannot accept from would spin
    # (thousands of iterations per second); it pauses for ACCEPT_RETRY_DELAY_S instead.
    assert starved["iterations"] <= 4 * (1.0 / ACCEPT_RETRY_DELAY_S + 1), starved
    assert result["accepted"] == clients_n, "accepting again once fds are free"
    assert result["greeted"] == clients_n
