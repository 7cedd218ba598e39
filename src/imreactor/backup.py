"""``imreactor backup`` / ``restore``: the suite's database to a file and back.

SQLite: the online backup API (``sqlite3.Connection.backup``) copies a consistent
snapshot page by page while db_proxy_server keeps writing; the file is a SQLite
database itself. PostgreSQL: ``pg_dump --format=custom`` (one consistent snapshot,
taken without blocking writers) and ``pg_restore --clean --if-exists
--single-transaction``. The binaries are taken from the newest
``/usr/lib/postgresql/<version>/bin`` (Debian's layout; pg_dump must be at least
the server's version), else from ``$PATH``. The password of a URL reaches them
through ``PGPASSWORD``, never the command line other users can read.

A backup is written to ``FILE.partial`` and renamed when complete, and never over an
existing file. A restore refuses a file that is not a backup of the same kind of
database, replaces everything in the database, then applies this program's
migrations: an older backup comes back at today's schema (docs/servers.md,
"Upgrades").
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import urllib.parse
from pathlib import Path

from .storage import StorageError, check_storage_url, open_storage

SQLITE_PREFIX = "sqlite:///"
SQLITE_MAGIC = b"SQLite format 3\x00"
PG_MAGIC = b"PGDMP"
PG_LIB_DIR = Path("/usr/lib/postgresql")
#: pg_dump / pg_restore may take long on a big database; this is only a guard.
PG_TIMEOUT_S = 3600.0


class BackupError(Exception):
    """The backup or restore cannot be done; the message says why, in one line."""


def backup(url: str, file: Path) -> str:
    """Copy the database ``url`` into the new file ``file``; a line saying what was done."""
    check_storage_url(url)
    if file.exists():
        raise BackupError(f"{file} exists; give a new file name")
    partial = file.with_name(file.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        if url.startswith(SQLITE_PREFIX):
            source = sqlite3.connect(f"file:{url[len(SQLITE_PREFIX) :]}?mode=ro", uri=True)
            target = sqlite3.connect(partial)
            try:
                source.backup(target)
            except sqlite3.Error as exc:
                raise BackupError(f"{url}: {exc}") from None
            finally:
                target.close()
                source.close()
        else:
            _pg("pg_dump", "--format=custom", "--no-owner", f"--file={partial}", url=url)
        os.replace(partial, file)
    finally:
        partial.unlink(missing_ok=True)
    return f"backed up {_shown(url)} to {file} ({file.stat().st_size} bytes)"


def restore(url: str, file: Path) -> str:
    """Replace everything in database ``url`` with the backup ``file``, then migrate it."""
    check_storage_url(url)
    try:
        with open(file, "rb") as f:
            magic = f.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise BackupError(f"{file}: {exc.strerror or exc}") from None
    sqlite_url = url.startswith(SQLITE_PREFIX)
    if magic.startswith(SQLITE_MAGIC):
        if not sqlite_url:
            raise BackupError(f"{file} is a SQLite backup; the database is PostgreSQL")
        _restore_sqlite(url[len(SQLITE_PREFIX) :], file)
    elif magic.startswith(PG_MAGIC):
        if sqlite_url:
            raise BackupError(f"{file} is a PostgreSQL backup; the database is SQLite")
        _pg("pg_restore", "--list", file=file)  # a damaged archive is refused before --clean
        _pg(
            "pg_restore",
            *("--clean", "--if-exists", "--no-owner", "--single-transaction"),
            url=url,
            file=file,
        )
    else:
        raise BackupError(f"{file} is not a backup (neither a SQLite file nor a pg_dump archive)")
    try:
        store = open_storage(url)  # applies the migrations this program has and it lacks
        version = store.schema_version()
        store.close()
    except StorageError as exc:
        raise BackupError(f"restored, but the database cannot be used: {exc}") from None
    return f"restored {_shown(url)} from {file} (schema version {version})"


def _restore_sqlite(path: str, file: Path) -> None:
    source = sqlite3.connect(f"file:{file}?mode=ro", uri=True)
    try:
        try:
            tables = {r[0] for r in source.execute("SELECT name FROM sqlite_master")}
        except sqlite3.Error as exc:
            raise BackupError(f"{file}: {exc}") from None
        if not {"schema_version", "users", "messages"} <= tables:
            raise BackupError(f"{file} is a SQLite file but not an imreactor database")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        target = sqlite3.connect(path)
        try:
            source.backup(target)  # page by page into the live file, WAL and all
        except sqlite3.Error as exc:
            raise BackupError(f"{path}: {exc}") from None
        finally:
            target.close()
    finally:
        source.close()


def pg_binary(name: str) -> str:
    """The newest ``pg_dump``/``pg_restore`` (Debian's per-version dirs first, then PATH)."""
    versions = sorted(
        (int(d.name) for d in PG_LIB_DIR.iterdir() if d.name.isdigit())
        if PG_LIB_DIR.is_dir()
        else [],
        reverse=True,
    )
    for version in versions:
        candidate = PG_LIB_DIR / str(version) / "bin" / name
        if candidate.is_file():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise BackupError(f"{name} not found (install PostgreSQL's client programs)")
    return found


def _pg(program: str, *args: str, url: str | None = None, file: Path | None = None) -> None:
    """Run ``program ARGS [--dbname=URL] [FILE]``; the URL's password goes in the env."""
    env = dict(os.environ)
    command = [pg_binary(program), *args]
    if url is not None:
        bare, password = _split_password(url)
        if password is not None:
            env["PGPASSWORD"] = password
        command.append(f"--dbname={bare}")
    if file is not None:
        command.append(str(file))
    try:
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=PG_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BackupError(f"{program}: {exc}") from None
    if done.returncode != 0:
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        raise BackupError(f"{program} failed: {'; '.join(lines[-3:]) or done.returncode}")


def _split_password(url: str, replacement: str = "") -> tuple[str, str | None]:
    """``url`` with its password replaced (by nothing: removed), and the password."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url, None
    kept = f":{replacement}@" if replacement else "@"
    netloc = parts.netloc.replace(f":{parts.password}@", kept, 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc)), urllib.parse.unquote(
        parts.password
    )


def _shown(url: str) -> str:
    """``url`` without its password, for printing."""
    return _split_password(url, "***")[0]
