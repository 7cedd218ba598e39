"""A throwaway PostgreSQL server for tests, run from the distribution's server binaries.

:class:`PostgresServer` creates a cluster in a fresh temporary directory (``initdb``,
trust authentication: it listens only on 127.0.0.1 and a socket inside that directory),
starts it on a free port, creates databases on demand, and at the end stops it
(``pg_ctl stop -m fast``) and deletes the directory. ``initdb`` and ``postgres`` refuse
to run as root, so as root they run as the ``postgres`` system user (``runuser``) and the
directory belongs to that user; as anyone else they run directly.

The cluster runs with ``fsync=off``: it lives for one test run. Its default
``synchronous_commit`` is off too, so a test sees ``on`` only if the storage code sets it
on its connections itself, as it must to be durable on any server.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

import psycopg
from psycopg import sql

PG_LIB_DIR = Path("/usr/lib/postgresql")
PG_BIN_ENV = "IMREACTOR_PG_BIN"  # overrides the search, e.g. for a hand-built server
SERVER_USER = "postgres"  # the system user that runs the server when we are root
SUPERUSER = "postgres"  # the database superuser initdb creates
START_TIMEOUT_S = 60
START_ATTEMPTS = 3  # a free port can be taken between choosing it and binding it


class PostgresUnavailable(RuntimeError):
    """PostgreSQL's server binaries (or the user to run them as) are missing."""


def find_pg_bin() -> Path:
    """The bin directory of the newest installed PostgreSQL server."""
    override = os.environ.get(PG_BIN_ENV)
    if override:
        if not (Path(override) / "initdb").is_file():
            raise PostgresUnavailable(f"{PG_BIN_ENV}={override}: no initdb there")
        return Path(override)
    candidates = []
    if PG_LIB_DIR.is_dir():
        for entry in PG_LIB_DIR.iterdir():
            if entry.name.isdigit() and (entry / "bin" / "initdb").is_file():
                candidates.append((int(entry.name), entry / "bin"))
    if not candidates:
        raise PostgresUnavailable(
            f"PostgreSQL server binaries not found ({PG_LIB_DIR}/<version>/bin/initdb): "
            "install the Debian package 'postgresql' (apt-get install postgresql) "
            f"or set {PG_BIN_ENV}"
        )
    return max(candidates)[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PostgresServer:
    """One private PostgreSQL cluster. Use as a context manager, or start()/cleanup().

    Not thread-safe; meant for one pytest session (or one test that needs its own
    server, e.g. to stop it underneath a client).
    """

    def __init__(self, bin_dir: Path | None = None) -> None:
        self.bin_dir = bin_dir or find_pg_bin()
        self._as_root = os.geteuid() == 0
        if self._as_root:
            try:
                self._server_pw: pwd.struct_passwd | None = pwd.getpwnam(SERVER_USER)
            except KeyError:
                raise PostgresUnavailable(
                    f"running as root, but there is no {SERVER_USER!r} user to run the "
                    "server as (the 'postgresql' package creates it)"
                ) from None
        else:
            self._server_pw = None
        self.tmp_dir: Path | None = None
        self.port = 0
        self._db_counter = itertools.count(1)
        self._running = False

    @property
    def data_dir(self) -> Path:
        assert self.tmp_dir is not None, "server not started"
        return self.tmp_dir / "data"

    @property
    def log_path(self) -> Path:
        assert self.tmp_dir is not None, "server not started"
        return self.tmp_dir / "server.log"

    def _run(self, *args: str) -> None:
        """Run a server binary (as the server user when root); raise with its output."""
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        if self._as_root:
            cmd = ["runuser", "-u", SERVER_USER, "--", *cmd]
        # cwd: the server user may not be allowed into the caller's directory.
        proc = subprocess.run(cmd, cwd=self.tmp_dir, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout}{proc.stderr}"
                f"{self._log_tail()}"
            )

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except (OSError, AssertionError):
            return ""
        return "\n--- server log (tail) ---\n" + "\n".join(lines[-30:])

    def _init_cluster(self) -> None:
        # The socket path must stay under ~107 bytes, so a deep $TMPDIR is not used.
        base = os.environ.get("TMPDIR", "/tmp")
        self.tmp_dir = Path(
            tempfile.mkdtemp(prefix="imreactor-pg-", dir=base if len(base) < 60 else "/tmp")
        )
        if self._server_pw is not None:
            os.chown(self.tmp_dir, self._server_pw.pw_uid, self._server_pw.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
        )
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write(
                "\n# test cluster\n"
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.tmp_dir}'\n"
                "fsync = off\n"
                "synchronous_commit = off\n"
                "full_page_writes = off\n"
                "max_connections = 200\n"
            )

    def start(self) -> None:
        """Create the cluster on first use, then start it; returns once it accepts connections."""
        if self._running:
            return
        if self.tmp_dir is None:
            self._init_cluster()
        keep_port = self.port != 0  # a restart keeps its URL valid
        for attempt in range(1, START_ATTEMPTS + 1):
            if not keep_port:
                self.port = free_port()
            try:
                self._run(
                    "pg_ctl",
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self.log_path),
                    "-o",
                    f"-p {self.port}",
                    "-w",
                    "-t",
                    str(START_TIMEOUT_S),
                    "start",
                )
            except RuntimeError:
                if attempt == START_ATTEMPTS or keep_port:
                    raise
                continue
            self._running = True
            return

    def stop(self) -> None:
        """Stop the server (fast shutdown: clients are disconnected). The cluster stays."""
        if self._running:
            self._running = False
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop")

    def cleanup(self) -> None:
        """Stop the server and delete its directory."""
        try:
            self.stop()
        finally:
            if self.tmp_dir is not None:
                shutil.rmtree(self.tmp_dir, ignore_errors=True)
                self.tmp_dir = None

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database (named ``test_<n>`` by default); its URL."""
        name = name or f"test_{next(self._db_counter)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def __enter__(self) -> PostgresServer:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()
