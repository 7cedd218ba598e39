"""``imreactor up``: the whole suite on one machine, one process per server.

Writes a configuration for every role into the data directory, starts
db_proxy_server, login_server and msg_server(s) as child processes (each waits
for the previous one's READY line), creates demo users on first start, prints
where a client connects, and on Ctrl-C/SIGTERM stops the children in reverse
order. If a child dies, the others are stopped too and ``up`` exits non-zero.
"""

from __future__ import annotations

import argparse
import json
import logging
import select
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .. import pki
from ..accounts import create_users, data_dir_database
from ..config import dump
from ..net.connection import is_port
from ..redis import RedisProcess, parse_redis_url

log = logging.getLogger(__name__)

DEMO_USERS = [("alice", "Alice"), ("bob", "Bob"), ("carol", "Carol"), ("dave", "Dave")]
DEMO_PASSWORD = "imreactor"
READY_TIMEOUT_S = 30.0


def _port(text: str) -> int:
    port = int(text)
    if not is_port(port, allow_zero=False):
        raise argparse.ArgumentTypeError(f"{text} is not a port (1..65535)")
    return port


def _count(text: str) -> int:
    n = int(text)
    if not 1 <= n <= 64:
        raise argparse.ArgumentTypeError(f"{text}: give 1..64")
    return n


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--data-dir", default="data", help="where the database and configs live")
    ap.add_argument("--host", default="127.0.0.1", help="address every server listens on")
    ap.add_argument("--http-port", type=_port, default=8080, help="login_server HTTP port")
    ap.add_argument("--login-port", type=_port, default=8100, help="login_server msg_server port")
    ap.add_argument("--msg-port", type=_port, default=8000, help="first msg_server's client port")
    ap.add_argument("--db-port", type=_port, default=10600, help="db_proxy_server port")
    ap.add_argument("--route-port", type=_port, default=8200, help="route_server port")
    ap.add_argument(
        "--msg-servers",
        type=_count,
        default=1,
        help="msg_servers to run (more than 1 adds a route_server unless --redis; ports from"
        " --msg-port up)",
    )
    ap.add_argument("--database", default=None, help="storage URL (default: SQLite in data dir)")
    ap.add_argument("--no-demo-users", action="store_true", help="do not create demo users")
    ap.add_argument(
        "--tls",
        action="store_true",
        help="msg_servers also take TLS clients (ports from --tls-port up); a CA and a server"
        " certificate are made in <data-dir>/pki and the CA's path printed for clients",
    )
    ap.add_argument("--tls-port", type=_port, default=8443, help="first msg_server's TLS port")
    ap.add_argument(
        "--redis",
        nargs="?",
        const=PRIVATE_REDIS,
        default=None,
        metavar="URL",
        help="msg_servers reach each other through Redis instead of a route_server: the one"
        " at URL (redis://host:port/db), or without URL a private redis-server started in"
        " <data-dir>/redis and stopped on exit",
    )


#: ``--redis`` without a URL: start a private redis-server.
PRIVATE_REDIS = "private"


def _redis_url(text: str) -> str:
    """``--redis URL`` checked where it is read (argparse's type= would fire on ``const``)."""
    try:
        parse_redis_url(text)
    except ValueError as exc:
        raise SystemExit(f"imreactor up: --redis: {exc}") from None
    return text


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[str]
    where: str = ""
    log_file: IO[str] | None = field(default=None, repr=False)


@dataclass
class SuiteLayout:
    """Where every server of a one-machine suite listens, and what it stores into.

    ``overrides`` adds or replaces keys per role (``{"msg": {"msg_burst": 10}}``).
    ``link_auth``: links between the servers are mutual TLS with a cluster CA kept
    in ``<data_dir>/pki`` (made on first use); False leaves them plain TCP.
    ``tls_ports``: one per msg_server, TLS ports for clients, with a certificate for
    ``host`` and ``localhost`` from :attr:`client_ca`.
    """

    data_dir: Path
    host: str = "127.0.0.1"
    http_port: int = 8080
    login_port: int = 8100
    msg_ports: list[int] = field(default_factory=lambda: [8000])
    db_port: int = 10600
    route_ports: list[int] = field(default_factory=list)
    database: str = ""
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    link_auth: bool = True
    tls_ports: list[int] = field(default_factory=list)
    #: A Redis URL: the msg_servers use the Redis fabric (then ``route_ports`` stays empty).
    redis: str = ""

    @property
    def pki_dir(self) -> Path:
        return self.data_dir.resolve() / "pki"

    @property
    def client_ca(self) -> Path:
        """The CA clients trust for the TLS ports (exists once :meth:`tables` ran)."""
        return self.pki_dir / "clients-ca.pem"

    @property
    def database_url(self) -> str:
        return self.database or data_dir_database(self.data_dir)

    def tables(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Config file name → its TOML tables."""
        h = self.host
        files: dict[str, dict[str, dict[str, Any]]] = {
            "db_proxy_server": {
                "dbproxy": {"listen_host": h, "port": self.db_port, "database": self.database_url}
            },
            **{
                ("route_server" if len(self.route_ports) == 1 else f"route_server{i}"): {
                    "route": {"listen_host": h, "port": port}
                }
                for i, port in enumerate(self.route_ports, 1)
            },
            "login_server": {
                "login": {
                    "listen_host": h,
                    "http_port": self.http_port,
                    "msg_server_port": self.login_port,
                    "client_port": 0,
                }
            },
        }
        if self.tls_ports and len(self.tls_ports) != len(self.msg_ports):
            raise ValueError("give one TLS port per msg_server")
        server_cert: pki.CertFiles | None = None
        if self.tls_ports:
            _, server_cert = pki.public_files(self.pki_dir, sorted({h, "localhost"}))
        for i, port in enumerate(self.msg_ports, 1):
            name = "msg_server" if len(self.msg_ports) == 1 else f"msg_server{i}"
            files[name] = {
                "msg": {
                    "listen_host": h,
                    "port": port,
                    "ip1": h,
                    "ip2": h,
                    "host_name": name,
                    "login_servers": [f"{h}:{self.login_port}"],
                    "db_proxies": [f"{h}:{self.db_port}"],
                    "route_servers": [f"{h}:{p}" for p in self.route_ports],
                    "redis": self.redis,
                    # Peers on one machine come back fast: retry sooner than across a network.
                    "reconnect_delays_s": [0.5, 1.0, 2.0, 4.0],
                }
            }
            if server_cert is not None:
                files[name]["msg"].update(
                    tls_port=self.tls_ports[i - 1],
                    cert_file=str(server_cert.cert),
                    key_file=str(server_cert.key),
                )
        link_keys: dict[str, str] = {}
        if self.link_auth:
            ca, link = pki.link_files(self.pki_dir)
            link_keys = {
                "link_ca_file": str(ca.cert),
                "link_cert_file": str(link.cert),
                "link_key_file": str(link.key),
            }
        for tables in files.values():
            for role, table in tables.items():
                table.update(link_keys)
                table.update(self.overrides.get(role, {}))
        return files

    def write(self) -> dict[str, Path]:
        """Write one config file per server into the data directory."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        paths = {}
        for name, tables in self.tables().items():
            path = self.data_dir / f"{name}.toml"
            path.write_text(
                "# Written by imreactor; change the command line instead.\n" + dump(tables)
            )
            paths[name] = path
        return paths

    def start(self, name: str) -> Child:
        """Start (or restart) the server ``name`` and wait for its READY line."""
        role = _ROLES[name.rstrip("0123456789")]
        return start_child(name, role, self.data_dir / f"{name}.toml", self.data_dir)

    def start_all(self) -> list[Child]:
        """Write the configs, start every server in dependency order, and return once
        login_server offers every msg_server to clients (so a client that asks at once
        gets an address, not "no msg_server is up")."""
        names = list(self.write())
        children: list[Child] = []
        try:
            for name in names:
                children.append(self.start(name))
            self.wait_until_offered(children)
        except BaseException:
            stop_children(children)
            raise
        return children

    def wait_until_offered(self, children: list[Child]) -> None:
        """Poll login_server's ``/readyz`` until all msg_servers have registered.

        A msg_server is READY once it listens; it registers with login_server over
        its link a moment later (longer when the link's TLS handshake is slow).
        """
        login = self.tables()["login_server"]["login"]
        https = bool(login.get("cert_file"))
        url = f"{'https' if https else 'http'}://{self.host}:{login['http_port']}/readyz"
        # A readiness probe of our own child on this machine: nothing secret crosses it,
        # and the certificate may be one the operator brought, signed by a CA we lack.
        context = ssl._create_unverified_context() if https else None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if any(child.proc.poll() is not None for child in children):
                return  # the supervision loop reports which one exited
            try:
                with urllib.request.urlopen(url, timeout=2.0, context=context) as rsp:
                    if json.loads(rsp.read()).get("msg_servers", 0) >= len(self.msg_ports):
                        return
            except (urllib.error.URLError, OSError, ValueError):
                pass  # 503 (nobody registered yet) arrives as HTTPError, a URLError
            time.sleep(0.1)
        raise RuntimeError(
            f"login_server did not offer all {len(self.msg_ports)} msg_server(s) within"
            f" {READY_TIMEOUT_S:g} s; see the logs in {self.data_dir}"
        )


_ROLES = {
    "db_proxy_server": "db-proxy-server",
    "login_server": "login-server",
    "route_server": "route-server",
    "msg_server": "msg-server",
}


def start_child(name: str, role: str, config: Path, data_dir: Path) -> Child:
    log_path = data_dir / f"{name}.log"
    log_file = open(log_path, "a")  # noqa: SIM115 - kept open for the child's lifetime
    proc = subprocess.Popen(
        [sys.executable, "-m", "imreactor", role, "-c", str(config)],
        stdout=subprocess.PIPE,
        stderr=log_file,
        text=True,
        cwd=data_dir,
    )
    child = Child(name, proc, log_file=log_file)
    assert proc.stdout is not None
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline()
            if line.startswith("READY"):
                child.where = line.split(maxsplit=2)[2].strip() if line.count(" ") >= 2 else ""
                return child
            if not line and proc.poll() is not None:
                break
        elif proc.poll() is not None:
            break
    stop_children([child])
    raise RuntimeError(f"{name} did not start; see {log_path}")


def stop_children(children: list[Child]) -> None:
    for child in reversed(children):
        if child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
    for child in reversed(children):
        try:
            child.proc.wait(10)
        except subprocess.TimeoutExpired:
            child.proc.kill()
            child.proc.wait()
        if child.log_file is not None:
            child.log_file.close()


def create_demo_users(database: str) -> list[str]:
    """Create the demo users that do not exist yet; returns the names created."""
    return create_users(database, DEMO_USERS, DEMO_PASSWORD)


def run(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir).resolve()
    private_redis: RedisProcess | None = None
    redis_url = ""
    if args.redis == PRIVATE_REDIS:
        private_redis = RedisProcess(data_dir / "redis")
        private_redis.start()
        redis_url = private_redis.url
        print(f"private redis-server at {redis_url} (files in {private_redis.directory})")
    elif args.redis is not None:
        redis_url = _redis_url(args.redis)
    try:
        return _run(args, data_dir, redis_url)
    finally:
        if private_redis is not None:
            private_redis.stop()


def _run(args: argparse.Namespace, data_dir: Path, redis_url: str) -> int:
    layout = SuiteLayout(
        data_dir=data_dir,
        host=args.host,
        http_port=args.http_port,
        login_port=args.login_port,
        msg_ports=[args.msg_port + i for i in range(args.msg_servers)],
        db_port=args.db_port,
        route_ports=[args.route_port] if args.msg_servers > 1 and not redis_url else [],
        database=args.database or "",
        tls_ports=[args.tls_port + i for i in range(args.msg_servers)] if args.tls else [],
        redis=redis_url,
    )
    layout.data_dir.mkdir(parents=True, exist_ok=True)
    if not args.no_demo_users:
        created = create_demo_users(layout.database_url)
        if created:
            print(f"created demo users {', '.join(created)} (password {DEMO_PASSWORD!r})")
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    children: list[Child] = []
    try:
        children = layout.start_all()
        print(
            f"imreactor suite is up (logs in {layout.data_dir}/):\n"
            f"  clients ask  http://{args.host}:{args.http_port}/msg_server\n"
            f"  msg_servers  {', '.join(f'{args.host}:{p}' for p in layout.msg_ports)}\n"
            + (
                f"  over TLS     {', '.join(f'{args.host}:{p}' for p in layout.tls_ports)}"
                f" (clients trust {layout.client_ca})\n"
                if layout.tls_ports
                else ""
            )
            + f"  try:         imreactor chat --user alice --password {DEMO_PASSWORD}"
            + (f" --ca {layout.client_ca}\n" if layout.tls_ports else "\n")
            + "Ctrl-C stops everything.",
            flush=True,
        )
        while not stopping:
            for child in children:
                if child.proc.poll() is not None:
                    code = child.proc.returncode
                    log.error("%s exited with %s; stopping the suite", child.name, code)
                    return 1
            time.sleep(0.2)
        return 0
    finally:
        stop_children(children)
        print("imreactor suite stopped", flush=True)
