"""A private ``redis-server`` in a directory of ours: for ``imreactor up`` and the tests.

:class:`RedisProcess` writes a ``redis.conf`` into its directory (loopback only, the
data files and the log there, append-only file on so that a restart keeps the
streams), starts Debian's ``redis-server`` on it, waits until it answers ``PING``,
and stops it with SIGTERM (Redis then writes its data and exits). A restart keeps the
port, so the URL handed out stays valid. Blocking calls: this is tooling that runs
before and after a loop, never on one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from .url import RedisAddress

REDIS_SERVER_ENV = "IMREACTOR_REDIS_SERVER"  # overrides the search, e.g. a hand-built server
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 15.0
START_ATTEMPTS = 3  # a free port can be taken between choosing it and binding it


class RedisUnavailable(RuntimeError):
    """There is no ``redis-server`` to run."""


def find_redis_server() -> str:
    """The ``redis-server`` binary: ``$IMREACTOR_REDIS_SERVER``, else the one on PATH."""
    override = os.environ.get(REDIS_SERVER_ENV)
    found = override or shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.access(found, os.X_OK):
        raise RedisUnavailable(
            f"redis-server not found ({found}): install the Debian package 'redis-server' "
            f"(apt-get install redis-server) or set {REDIS_SERVER_ENV}"
        )
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def ping(port: int, timeout_s: float = 1.0) -> bool:
    """Whether a Redis on 127.0.0.1:``port`` answers ``PING`` with ``+PONG`` now."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisProcess:
    """One private ``redis-server`` with its files in ``directory``. Not thread-safe.

    ``port`` 0 picks a free one at the first start. ``durable`` turns on the
    append-only file with an fsync per write (``appendfsync always``): what a
    command was acknowledged for survives a crash of Redis; without it the data
    lives in memory only. ``appendfsync`` ("always", "everysec", "no") is how often
    that file is synced: "everysec" loses at most a second's writes in a crash of the
    machine or of Redis, and survives a restart like "always".

    ``tls`` (certificate file, key file; the certificate valid for 127.0.0.1) adds a
    TLS port (``tls_port``, chosen like ``port``) that asks clients for no certificate;
    :attr:`url` is then the ``rediss://`` one. The plain port stays (loopback only) for
    the readiness probe.
    """

    def __init__(
        self,
        directory: Path,
        port: int = 0,
        *,
        durable: bool = True,
        appendfsync: str = "always",
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        if appendfsync not in ("always", "everysec", "no"):
            raise ValueError(f"appendfsync must be always, everysec or no, not {appendfsync!r}")
        self.directory = Path(directory)
        self.port = port
        self.durable = durable
        self.appendfsync = appendfsync
        self.tls = tls
        self.tls_port = 0
        self.binary = find_redis_server()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> RedisAddress:
        """Where clients connect: the TLS port if there is one."""
        assert self.port, "not started"
        if self.tls is not None:
            return RedisAddress("127.0.0.1", self.tls_port, tls=True)
        return RedisAddress("127.0.0.1", self.port)

    @property
    def url(self) -> str:
        return str(self.address)

    @property
    def log_path(self) -> Path:
        return self.directory / "redis.log"

    @property
    def pid(self) -> int | None:
        """The running server's process id (None when stopped): for reading its /proc."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _write_conf(self) -> Path:
        conf = self.directory / "redis.conf"
        conf.write_text(
            "# written by imreactor: a private Redis for this data directory\n"
            "bind 127.0.0.1\n"
            f"port {self.port}\n"
            f"dir {self.directory}\n"
            f"logfile {self.log_path}\n"
            "daemonize no\n"
            'save ""\n'
            f"appendonly {'yes' if self.durable else 'no'}\n"
            f"appendfsync {self.appendfsync}\n"
            "databases 16\n"
        )
        if self.tls is not None:
            cert, key = self.tls
            with conf.open("a") as f:
                f.write(
                    f"tls-port {self.tls_port}\n"
                    f"tls-cert-file {cert}\n"
                    f"tls-key-file {key}\n"
                    "tls-auth-clients no\n"
                )
        return conf

    def start(self) -> None:
        """Start it (idempotent); returns once it answers PING, or raises with its log."""
        if self.running:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        keep_port = self.port != 0
        for attempt in range(1, START_ATTEMPTS + 1):
            if not keep_port:
                self.port = _free_port()
                self.tls_port = 0
                while self.tls is not None and self.tls_port in (0, self.port):
                    self.tls_port = _free_port()
            conf = self._write_conf()
            self._proc = subprocess.Popen(
                [self.binary, str(conf)],
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + START_TIMEOUT_S
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    break  # exited: the port was taken, or the config is refused
                if ping(self.port):
                    return
                time.sleep(0.02)
            self.kill()
            if attempt == START_ATTEMPTS or keep_port:
                raise RuntimeError(f"redis-server did not start on port {self.port}{self._tail()}")

    def stop(self) -> None:
        """SIGTERM and wait (Redis flushes its append-only file first). Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def kill(self) -> None:
        """SIGKILL: the crash of a Redis, for tests. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()

    def _tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n--- redis log (tail) ---\n" + "\n".join(lines[-20:])

    def __enter__(self) -> RedisProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
