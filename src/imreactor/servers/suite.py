"""``imreactor up``: the whole suite on one machine, one process per server.

Writes a configuration for every role into the data directory, starts
db_proxy_server, msfs (the image store), login_server and msg_server(s) as
child processes (each waits for the previous one's READY line), creates demo
users on first start, prints where a client connects, and on Ctrl-C/SIGTERM
drains the children in dependency order (:func:`stop_children`). If a child dies,
it is restarted with backoff.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import ctypes
import ctypes.util
import errno
import fcntl
import json
import logging
import os
import select
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .. import logs, pki
from ..accounts import create_users, data_dir_database, remember_database
from ..config import dump
from ..net.connection import is_port
from ..redis import RedisProcess, parse_redis_url
from .runner import DEFAULT_DRAIN_TIMEOUT_S

log = logging.getLogger(__name__)

DEMO_USERS = [("alice", "Alice"), ("bob", "Bob"), ("carol", "Carol"), ("dave", "Dave")]
DEMO_PASSWORD = "imreactor"
READY_TIMEOUT_S = 30.0


def _port(text: str) -> int:
    port = int(text)
    if not is_port(port, allow_zero=False):
        raise argparse.ArgumentTypeError(f"{text} is not a port (1..65535)")
    return port


def _port_or_0(text: str) -> int:
    port = int(text)
    if not is_port(port, allow_zero=True):
        raise argparse.ArgumentTypeError(f"{text} is not a port (0..65535)")
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
    ap.add_argument("--msfs-port", type=_port, default=8700, help="msfs (image store) port")
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
        "--ws-port",
        type=_port_or_0,
        default=8800,
        help="first msg_server's WebSocket port, for browsers (0 = none; the next ones count up)",
    )
    ap.add_argument(
        "--metrics-port",
        type=_port,
        default=8300,
        help="first port of the other servers' /metrics, /healthz, /readyz (login_server"
        " serves them on --http-port); one per server from here up",
    )
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
    ``host`` and ``localhost`` from :attr:`client_ca`. ``metrics_port``: the first
    port of the HTTP endpoints of the servers other than login_server (which serves
    them on ``http_port``), one per server in start order; 0 for none.
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
    #: One per msg_server: WebSocket ports for browsers (empty: none).
    ws_ports: list[int] = field(default_factory=list)
    #: A Redis URL: the msg_servers use the Redis fabric (then ``route_ports`` stays empty).
    redis: str = ""
    metrics_port: int = 0
    msfs_port: int = 8700

    @property
    def msfs_url(self) -> str:
        """Where clients upload images: login_server hands it out as msfsPrior/msfsBackup."""
        return f"http://{self.host}:{self.msfs_port}/"

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

    def tables(self, *, certificates: bool = True) -> dict[str, dict[str, dict[str, Any]]]:
        """Config file name → its TOML tables.

        ``certificates=False`` leaves out the certificate and key paths, and so makes
        none of them in :attr:`pki_dir` (for reading the layout, its ports say).
        """
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
            # Files under <data_dir>/msfs: servers run with the data directory as cwd.
            "msfs": {"msfs": {"listen_host": h, "port": self.msfs_port, "store_dir": "msfs"}},
            "login_server": {
                "login": {
                    "listen_host": h,
                    "http_port": self.http_port,
                    "msg_server_port": self.login_port,
                    "client_port": 0,
                    "msfs_prior": self.msfs_url,
                    "msfs_backup": self.msfs_url,
                }
            },
        }
        if self.ws_ports and len(self.ws_ports) != len(self.msg_ports):
            raise ValueError("give one WebSocket port per msg_server")
        if self.tls_ports and len(self.tls_ports) != len(self.msg_ports):
            raise ValueError("give one TLS port per msg_server")
        server_cert: pki.CertFiles | None = None
        if self.tls_ports and certificates:
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
            if self.ws_ports:
                files[name]["msg"]["ws_port"] = self.ws_ports[i - 1]
            if self.tls_ports:
                files[name]["msg"]["tls_port"] = self.tls_ports[i - 1]
            if server_cert is not None:
                files[name]["msg"].update(
                    cert_file=str(server_cert.cert), key_file=str(server_cert.key)
                )
        link_keys: dict[str, str] = {}
        if self.link_auth and certificates:
            ca, link = pki.link_files(self.pki_dir)
            link_keys = {
                "link_ca_file": str(ca.cert),
                "link_cert_file": str(link.cert),
                "link_key_file": str(link.key),
            }
        # login_server and msfs serve /metrics on their own HTTP ports.
        others = [name for name in files if name not in ("login_server", "msfs")]
        for i, name in enumerate(others if self.metrics_port else []):
            for table in files[name].values():
                table["http_port"] = self.metrics_port + i
        for tables in files.values():
            for role, table in tables.items():
                if role != "msfs":  # msfs has no links to other servers, only HTTP clients
                    table.update(link_keys)
                table.update(self.overrides.get(role, {}))
        return files

    def metrics_urls(self) -> dict[str, str]:
        """Server name → its ``/metrics`` URL (the servers that serve one)."""
        urls = {}
        for name, tables in self.tables(certificates=False).items():
            for table in tables.values():
                if table.get("http_port"):
                    scheme = (
                        "https" if name == "login_server" and table.get("cert_file") else "http"
                    )
                    urls[name] = f"{scheme}://{self.host}:{table['http_port']}/metrics"
        urls["msfs"] = f"{self.msfs_url}metrics"  # on its one HTTP port
        return urls

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


#: The TOML table of every role ``up`` runs.
_ROLE_TABLES = ("dbproxy", "route", "msfs", "login", "msg")

_ROLES = {
    "db_proxy_server": "db-proxy-server",
    "login_server": "login-server",
    "route_server": "route-server",
    "msg_server": "msg-server",
    "msfs": "msfs",
}


def start_child(name: str, role: str, config: Path, data_dir: Path) -> Child:
    log_path = data_dir / f"{name}.log"
    log_file = open(log_path, "a")  # noqa: SIM115 - kept open for the child's lifetime
    proc = _spawn(
        [sys.executable, "-m", "imreactor", role, "-c", str(config)],
        stdout=subprocess.PIPE,
        stderr=log_file,
        text=True,
        cwd=data_dir,
        # The servers end with `up`, even when it is killed with SIGKILL and cannot
        # stop them itself (elsewhere than Linux, only a clean stop ends them).
        preexec_fn=_die_with(os.getpid()) if sys.platform.startswith("linux") else None,
        # A group of its own: Ctrl-C in a terminal signals `up` alone, which then drains
        # the servers in order, instead of every server at once.
        process_group=0,
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


#: Drain order: what clients talk to first, what stores last; the servers of one stage
#: drain together. msg_servers answer what they were asked while db_proxy, route_server
#: and login_server still serve them; db_proxy finishes every store it was given.
STOP_STAGES = (("msg_server",), ("route_server", "login_server", "msfs"), ("db_proxy_server",))
#: How long a child may take to drain before it is killed: its drain_timeout_s and then
#: some (a child exits by itself once that passes).
STOP_WAIT_S = DEFAULT_DRAIN_TIMEOUT_S + 5.0


def _stage(name: str) -> int:
    role = name.rstrip("0123456789")
    return next((i for i, stage in enumerate(STOP_STAGES) if role in stage), len(STOP_STAGES))


def stop_children(children: list[Child]) -> None:
    """SIGTERM (drain) the children stage by stage (:data:`STOP_STAGES`), each stage once
    the one before has exited; one that outlives :data:`STOP_WAIT_S` is killed."""
    for stage in sorted({_stage(child.name) for child in children}):
        group = [child for child in children if _stage(child.name) == stage]
        for child in group:
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_WAIT_S
        for child in group:
            try:
                child.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("%s did not exit within %g s; killing it", child.name, STOP_WAIT_S)
                child.proc.kill()
                child.proc.wait()
            if child.log_file is not None:
                child.log_file.close()


class SuiteError(Exception):
    """``up`` cannot start: one line for the operator, exit status 2."""


def _ports_of(layout: SuiteLayout) -> list[tuple[str, int]]:
    """(what, port) for every port the suite's servers will listen on, read from the
    tables :meth:`SuiteLayout.tables` writes (without making their certificates)."""
    found: list[tuple[str, int]] = []
    for name, tables in layout.tables(certificates=False).items():
        for table in tables.values():
            for key, value in table.items():
                if (key == "port" or key.endswith("_port")) and isinstance(value, int) and value:
                    found.append((f"{name} {key}", value))
    return found


def check_ports_free(layout: SuiteLayout) -> None:
    """Raise :class:`SuiteError` naming the first port some other process holds."""
    seen: dict[int, str] = {}
    for what, port in _ports_of(layout):
        if port in seen:
            raise SuiteError(f"port {port} is given twice ({seen[port]} and {what})")
        seen[port] = what
        probe = socket.socket(socket.AF_INET6 if ":" in layout.host else socket.AF_INET)
        try:
            # SO_REUSEADDR as the servers set it: a port in TIME_WAIT is free for them.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((layout.host, port))
        except OSError as exc:
            why = "already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise SuiteError(f"port {port} ({what}) on {layout.host}: {why}") from None
        finally:
            probe.close()


def lock_data_dir(data_dir: Path) -> IO[str]:
    """Hold ``<data_dir>/up.lock`` for the life of this process, or raise SuiteError.

    The lock (flock, released by the kernel however the process ends) keeps a second
    ``up`` from rewriting the configs and logs of a suite that runs in this directory.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = open(data_dir / "up.lock", "a+")  # noqa: SIM115 - held until exit
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        pid = lock.read().strip() or "?"
        lock.close()
        raise SuiteError(f"a suite is already running in {data_dir} (pid {pid})") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


_PR_SET_PDEATHSIG = 1


_spawner: concurrent.futures.ThreadPoolExecutor | None = None
_spawner_lock = threading.Lock()


def _spawn(args: list[str], **kw: Any) -> subprocess.Popen[str]:
    """``subprocess.Popen`` from one thread that lives as long as this process.

    Linux delivers PR_SET_PDEATHSIG when the *thread* that forked the child ends, not
    the process: a server restarted from a short-lived thread (a supervisor's timer, a
    test's fault injector) would get SIGTERM as soon as that thread returned. Forking
    every child from one long-lived thread ties each child's life to the process's.
    """
    global _spawner
    with _spawner_lock:
        if _spawner is None:
            _spawner = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="spawner")

    def popen() -> subprocess.Popen[str]:
        return subprocess.Popen(args, **kw)

    return _spawner.submit(popen).result()


def _die_with(parent: int) -> Callable[[], None]:
    """For the child, before exec: SIGTERM when ``parent`` dies, even by SIGKILL (Linux)."""
    libc_name = ctypes.util.find_library("c")

    def arm() -> None:
        if libc_name is not None:
            ctypes.CDLL(libc_name).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)  # the parent died before the signal was armed

    return arm


def _redacted(url: str) -> str:
    """``url`` without its password, for printing."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def create_demo_users(database: str) -> list[str]:
    """Create the demo users that do not exist yet; returns the names created."""
    return create_users(database, DEMO_USERS, DEMO_PASSWORD)


#: Waits before restarting a server that exited, by how many times in a row it did.
RESTART_DELAYS_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
#: A server that ran this long before exiting starts its restart count again.
RESTART_RESET_S = 60.0
#: Restarts in a row after which ``up`` gives up and stops the suite.
MAX_RESTARTS = 8


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except SuiteError as exc:
        print(f"imreactor up: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    redis_url = "" if args.redis in (None, PRIVATE_REDIS) else _redis_url(args.redis)
    private = args.redis == PRIVATE_REDIS
    layout = SuiteLayout(
        data_dir=Path(args.data_dir).resolve(),
        host=args.host,
        http_port=args.http_port,
        login_port=args.login_port,
        msg_ports=[args.msg_port + i for i in range(args.msg_servers)],
        db_port=args.db_port,
        route_ports=[args.route_port] if args.msg_servers > 1 and args.redis is None else [],
        database=args.database or "",
        tls_ports=[args.tls_port + i for i in range(args.msg_servers)] if args.tls else [],
        ws_ports=[args.ws_port + i for i in range(args.msg_servers)] if args.ws_port else [],
        metrics_port=args.metrics_port,
        msfs_port=args.msfs_port,
        redis=redis_url,
        # --log-format / --log-level reach every server through its configuration.
        overrides=dict.fromkeys(_ROLE_TABLES, logs.config_keys(args)),
    )
    # Before anything is written: a suite running here keeps its files, and a port
    # someone holds is named as such instead of failing one server's start.
    lock = lock_data_dir(layout.data_dir)
    try:
        check_ports_free(layout)
        if layout.database:
            # Remembered, so that the next `up` and every admin command given this data
            # dir use the same database without being told again.
            remember_database(layout.data_dir, layout.database)
        private_redis: RedisProcess | None = None
        if private:
            private_redis = RedisProcess(layout.data_dir / "redis")
            private_redis.start()
            layout.redis = private_redis.url
            print(f"private redis-server at {layout.redis} (files in {private_redis.directory})")
        try:
            return _supervise(layout, args)
        finally:
            if private_redis is not None:
                private_redis.stop()
    finally:
        lock.close()


def _banner(layout: SuiteLayout) -> str:
    h = layout.host
    login_url = f"http://{h}:{layout.http_port}"
    chat = f"imreactor chat --user alice --password {DEMO_PASSWORD}"
    if login_url != "http://127.0.0.1:8080":  # the clients' default
        chat += f" --login-url {login_url}"
    if layout.tls_ports:
        chat += f" --tls --ca {layout.client_ca}"
    lines = [
        f"imreactor suite is up in {layout.data_dir} (logs and configs there):",
        f"  database     {_redacted(layout.database_url)}",
        f"  clients ask  {login_url}/msg_server",
        f"  dashboard    {login_url}/dashboard",
        f"  web chat     {login_url}/  (open it in a browser)",
        f"  msg_servers  {', '.join(f'{h}:{p}' for p in layout.msg_ports)}",
        f"  images       {layout.msfs_url} (msfs)",
    ]
    if layout.ws_ports:
        ws = ", ".join(f"ws://{h}:{p}/" for p in layout.ws_ports)
        lines.append(f"  browsers     {ws}")
    if layout.tls_ports:
        tls = ", ".join(f"{h}:{p}" for p in layout.tls_ports)
        lines.append(f"  over TLS     {tls} (clients trust {layout.client_ca})")
    lines += [f"  metrics      {url}  ({name})" for name, url in layout.metrics_urls().items()]
    lines += [f"  try:         {chat}", "Ctrl-C stops everything."]
    return "\n".join(lines)


def _supervise(layout: SuiteLayout, args: argparse.Namespace) -> int:
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
        print(_banner(layout), flush=True)
        started = {child.name: time.monotonic() for child in children}
        restarts = dict.fromkeys(started, 0)
        while not stopping:
            for i, child in enumerate(children):
                if child.proc.poll() is None:
                    continue
                code = child.proc.returncode
                stop_children([child])  # closes its log file
                ran = time.monotonic() - started[child.name]
                if ran >= RESTART_RESET_S:
                    restarts[child.name] = 0
                if restarts[child.name] >= MAX_RESTARTS:
                    log.error(
                        "%s exited with %s after %d restarts in a row; stopping the suite",
                        child.name,
                        code,
                        restarts[child.name],
                    )
                    return 1
                delay = RESTART_DELAYS_S[min(restarts[child.name], len(RESTART_DELAYS_S) - 1)]
                restarts[child.name] += 1
                log.error(
                    "%s exited with %s after %.0f s; restarting it in %g s (restart %d)",
                    child.name,
                    code,
                    ran,
                    delay,
                    restarts[child.name],
                )
                deadline = time.monotonic() + delay
                while not stopping and time.monotonic() < deadline:
                    time.sleep(0.1)
                if stopping:
                    break
                try:
                    children[i] = layout.start(child.name)
                except RuntimeError as exc:
                    log.error("%s", exc)
                    children[i] = child  # still exited: the next turn tries again
                    started[child.name] = time.monotonic()
                    continue
                started[child.name] = time.monotonic()
                log.warning("%s restarted", child.name)
            time.sleep(0.2)
        return 0
    finally:
        stop_children(children)
        print("imreactor suite stopped", flush=True)
