"""Fixtures that run the IM suite as real server processes on loopback ports.

``suite`` starts db_proxy_server, login_server and msg_server from a
:class:`~imreactor.servers.suite.SuiteLayout` (the same code ``imreactor up``
uses) with free ports, on SQLite and on PostgreSQL (``database`` is
parametrized), with demo users alice, bob, carol and dave created first.
"""

from __future__ import annotations

import random
import socket
import ssl
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from imreactor import pki
from imreactor.client import Client
from imreactor.servers.linkauth import LinkSecurity, link_server_context
from imreactor.servers.suite import (
    DEMO_PASSWORD,
    Child,
    SuiteLayout,
    create_demo_users,
    stop_children,
)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    """``GET url`` (a ``/metrics``) parsed: (sample name, sorted labels) → value."""
    with urllib.request.urlopen(url, timeout=5) as rsp:
        assert rsp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = rsp.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free right now on 127.0.0.1."""
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` to 127.0.0.1:``port`` on a plain socket; all it answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def free_port_run(n: int) -> int:
    """A port p with p..p+n-1 all free right now on 127.0.0.1 (``imreactor up`` numbers
    msg_servers up from one port). Drawn below the ephemeral range, which outgoing
    connections take ports from at any time."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 30000 - n)
        socks: list[socket.socket] = []
        try:
            for port in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        return base
    raise RuntimeError(f"no run of {n} free ports found")


class RunningSuite:
    """A started suite: its layout, its child processes, and client helpers."""

    def __init__(self, layout: SuiteLayout) -> None:
        self.layout = layout
        self.children: dict[str, Child] = {}
        self.clients: list[Client] = []

    def start(self, *, offered: bool = True) -> None:
        """Start every server; if one fails to start, stop those already running and raise.

        With ``offered``, also wait until login_server offers every msg_server (a suite
        whose msg_servers cannot register, on purpose, passes False).
        """
        self.layout.write()
        try:
            for name in self.layout.tables():
                self.children[name] = self.layout.start(name)
            if offered:
                self.layout.wait_until_offered(list(self.children.values()))
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for client in self.clients:
            client.close()
        stop_children(list(self.children.values()))

    def kill(self, name: str) -> None:
        """SIGKILL a server (no chance to clean up)."""
        child = self.children[name]
        child.proc.kill()
        child.proc.wait()
        stop_children([child])

    def restart(self, name: str, *, hard: bool = False) -> None:
        """Stop (SIGTERM, or SIGKILL if ``hard``) and start a server again on the same port."""
        if hard:
            self.kill(name)
        else:
            stop_children([self.children[name]])
        self.children[name] = self.layout.start(name)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.layout.http_port}"

    def client(self, server: int = 0, **kw: Any) -> Client:
        """A client connected to msg_server number ``server`` (0 = the first)."""
        c = Client.connect("127.0.0.1", self.layout.msg_ports[server], **kw)
        self.clients.append(c)
        return c

    def login(
        self, name: str, password: str = DEMO_PASSWORD, *, server: int = 0, **kw: Any
    ) -> Client:
        """Log ``name`` in; retries while msg_server is still linking to its peers (3/4/5)."""
        deadline = time.monotonic() + 10
        while True:
            c = self.client(server)
            res = c.login(name, password, check=False, **kw)
            if res.result_code == 0:
                return c
            c.close()
            if res.result_code not in (3, 4, 5) or time.monotonic() > deadline:
                raise AssertionError(f"login of {name} refused: {res.result_code}")
            time.sleep(0.1)

    def log_text(self, name: str) -> str:
        return (self.layout.data_dir / f"{name}.log").read_text()


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database URL on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'im.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


SuiteFactory = Callable[..., RunningSuite]


def start_suite(
    data_dir: Path,
    database: str,
    *,
    msg_servers: int = 1,
    tls: bool = False,
    overrides: dict[str, dict[str, Any]] | None = None,
    offered: bool = True,
    redis: str = "",
) -> RunningSuite:
    """Start a suite on free ports in ``data_dir`` with the demo users; the caller stops it.

    ``msg_servers > 1`` adds a route_server, unless ``redis`` (a URL) makes them use the
    Redis fabric; ``tls`` gives every msg_server a TLS listener; ``offered``: see
    :meth:`RunningSuite.start`.
    """
    http, login, db, route, msfs, *ports = free_ports(5 + msg_servers * (2 if tls else 1))
    layout = SuiteLayout(
        data_dir=data_dir,
        http_port=http,
        login_port=login,
        msg_ports=ports[:msg_servers],
        db_port=db,
        route_ports=[route] if msg_servers > 1 and not redis else [],
        database=database,
        tls_ports=ports[msg_servers:],
        overrides=overrides or {},
        msfs_port=msfs,
        redis=redis,
    )
    create_demo_users(layout.database_url)
    suite = RunningSuite(layout)
    suite.start(offered=offered)
    return suite


@pytest.fixture
def make_suite(database: str, tmp_path: Path) -> Iterator[SuiteFactory]:
    """Build and start a suite; ``overrides`` set config keys per role."""
    started: list[RunningSuite] = []

    def make(
        overrides: dict[str, dict[str, Any]] | None = None,
        msg_servers: int = 1,
        offered: bool = True,
        redis: str = "",
    ) -> RunningSuite:
        suite = start_suite(
            tmp_path / f"suite{len(started)}",
            database,
            msg_servers=msg_servers,
            overrides=overrides,
            offered=offered,
            redis=redis,
        )
        started.append(suite)
        return suite

    yield make
    for suite in started:
        suite.stop()


@pytest.fixture
def suite(make_suite: SuiteFactory) -> RunningSuite:
    """A suite with default settings."""
    return make_suite()


def link_server_ssl(suite: RunningSuite) -> ssl.SSLContext:
    """A server context with ``suite``'s link certificate, for a test double that
    plays a server of the cluster (a fake route_server, say)."""
    ca, link = pki.link_files(suite.layout.data_dir.resolve() / "pki")
    security = LinkSecurity(
        link_ca_file=str(ca.cert), link_cert_file=str(link.cert), link_key_file=str(link.key)
    )
    context = link_server_context(security, "test")
    assert context is not None
    return context
