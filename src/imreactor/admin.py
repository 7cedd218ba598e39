"""Administration commands: accounts, departments and groups in storage; configuration files.

::

    imreactor user add NAME --password PW [--nick NICK] [--department ID]
    imreactor user list
    imreactor user passwd NAME --password PW
    imreactor user disable NAME | imreactor user enable NAME | imreactor user del NAME
    imreactor dept add NAME [--parent ID] [--priority N]
    imreactor dept list
    imreactor group add NAME --creator USER [--members a,b,c]
    imreactor group list | imreactor group members GROUP
    imreactor backup FILE | imreactor restore FILE
    imreactor config defaults [ROLE]
    imreactor config check FILE [--role ROLE]
    imreactor config import FILE.conf --role ROLE

The storage commands find the database as ``imreactor up`` does: ``--data-dir DIR``
(default ``data``) uses the database DIR remembers (``up --database``), else
``DIR/imreactor.db``; ``--database URL`` names any storage URL. They work while the
suite runs: each command is a few short transactions, and SQLite's WAL journal and
busy timeout let them interleave with db_proxy_server's. A data dir with no database
is refused, so that a command run from the wrong directory says so instead of
making a new, empty database there; only the ``add`` commands given ``--data-dir``
by name make one (accounts prepared before the first ``imreactor up``).

``user disable`` and ``user del`` also close the user's open sessions: they ask the
login_server of the data dir (``DIR/login_server.toml``, or ``--login-config FILE``)
over its msg_server port, authenticated with the cluster's link certificate, and
login_server tells every msg_server registered with it (docs/servers.md, "Closing a
user's sessions"). With no login_server listening there is no session to close.

Exit status: 0 done, 1 refused or failed (one line on stderr says why), 2 bad usage.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from .config import ConfigError, describe, from_mapping
from .servers.confimport import ROLES, import_conf, render

if TYPE_CHECKING:
    from typing import TypeAlias

    from .storage import Storage

    Subparsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]
    Command: TypeAlias = Callable[[argparse.Namespace], None]

DEFAULT_DATA_DIR = "data"
"""The data directory ``imreactor up`` uses by default; the database is ``imreactor.db`` in it."""

SQLITE_PREFIX = "sqlite:///"


class AdminError(Exception):
    """The command cannot do what was asked; the message is the one line to print."""


def register(sub: Subparsers) -> None:
    """Add the ``user``, ``dept``, ``group``, ``backup``, ``restore`` and ``config`` commands."""
    store = argparse.ArgumentParser(add_help=False)
    where = store.add_argument_group("storage").add_mutually_exclusive_group()
    where.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="use the database of DIR (the one `imreactor up --database` gave it, else"
        f" DIR/imreactor.db; default: {DEFAULT_DATA_DIR})",
    )
    where.add_argument(
        "--database", metavar="URL", help="storage URL: sqlite:///PATH or postgresql://..."
    )

    def command(
        group: tuple[str, Subparsers], name: str, fn: Command, help_: str, storage: bool = True
    ) -> argparse.ArgumentParser:
        p = group[1].add_parser(name, help=help_, parents=[store] if storage else [])
        p.set_defaults(run=_runner(f"{group[0]} {name}", fn))
        return p

    user = _group(sub, "user", "add, list, change, disable and enable user accounts")
    p = command(user, "add", _user_add, "create a user")
    p.add_argument("name", metavar="NAME", help="login name")
    p.add_argument("--password", required=True, metavar="PW", help="plaintext password")
    p.add_argument("--nick", metavar="NICK", help="display name (default: NAME)")
    p.add_argument(
        "--department", type=int, default=0, metavar="ID", help="department id (default: none)"
    )
    command(user, "list", _user_list, "list every user")
    p = command(user, "passwd", _user_passwd, "set a user's password")
    p.add_argument("name", metavar="NAME", help="login name")
    p.add_argument("--password", required=True, metavar="PW", help="new plaintext password")
    p = command(user, "disable", _user_disable, "refuse every login of a user, close its sessions")
    p.add_argument("name", metavar="NAME", help="login name")
    _login_config_argument(p)
    p = command(user, "enable", _user_enable, "let a disabled user log in again")
    p.add_argument("name", metavar="NAME", help="login name")
    p = command(user, "del", _user_del, "delete a user (its sessions closed; history stays)")
    p.add_argument("name", metavar="NAME", help="login name")
    _login_config_argument(p)

    dept = _group(sub, "dept", "add and list departments")
    p = command(dept, "add", _dept_add, "create a department")
    p.add_argument("name", metavar="NAME", help="department name")
    p.add_argument(
        "--parent", type=int, default=0, metavar="ID", help="parent department (default: none)"
    )
    p.add_argument("--priority", type=int, default=0, metavar="N", help="sort order (default 0)")
    command(dept, "list", _dept_list, "list every department")

    group = _group(sub, "group", "add and list groups, list their members")
    p = command(group, "add", _group_add, "create a NORMAL (permanent) group")
    p.add_argument("name", metavar="NAME", help="group name")
    p.add_argument("--creator", required=True, metavar="USER", help="login name of its owner")
    p.add_argument(
        "--members",
        default="",
        metavar="a,b,c",
        help="login names of the members, comma-separated (the creator is always one)",
    )
    command(group, "list", _group_list, "list every group")
    p = command(group, "members", _group_members, "list the members of a group")
    p.add_argument("group", metavar="GROUP", help="group id, or a name only one group has")

    p = sub.add_parser("backup", help="copy the database to FILE, online", parents=[store])
    p.add_argument("file", metavar="FILE", help="new file (SQLite file or pg_dump archive)")
    p.set_defaults(run=_runner("backup", _backup))
    p = sub.add_parser(
        "restore", help="replace the database with a backup (suite stopped)", parents=[store]
    )
    p.add_argument("file", metavar="FILE", help="what imreactor backup wrote")
    p.set_defaults(run=_runner("restore", _restore))

    config = _group(sub, "config", "print, check and import server configuration")
    p = command(config, "defaults", _config_defaults, "print every key with its default", False)
    roles = ", ".join(ROLES)
    p.add_argument(
        "role", nargs="?", choices=list(ROLES), metavar="ROLE", help=f"only this table ({roles})"
    )
    p = command(config, "check", _config_check, "check a TOML configuration file", False)
    p.add_argument("file", metavar="FILE", help="TOML file")
    p.add_argument(
        "--role", choices=list(ROLES), metavar="ROLE", help=f"a table that must be there ({roles})"
    )
    p = command(config, "import", _config_import, "print a TeamTalk .conf file as TOML", False)
    p.add_argument("file", metavar="FILE", help="loginserver.conf, msgserver.conf, ...")
    p.add_argument(
        "--role", required=True, choices=list(ROLES), metavar="ROLE", help=f"its server ({roles})"
    )


def _group(sub: Subparsers, name: str, help_: str) -> tuple[str, Subparsers]:
    p = sub.add_parser(name, help=help_)
    return name, p.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND")


def _runner(name: str, fn: Command) -> Callable[[argparse.Namespace], int]:
    """``fn`` as a ``run`` function: every expected failure becomes one line, with status 2
    for a configuration that cannot be used (as the servers exit on it), else 1."""

    def run(args: argparse.Namespace) -> int:
        from .backup import BackupError
        from .storage import StorageError

        try:
            fn(args)
        except ConfigError as exc:
            print(f"imreactor {name}: {_one_line(str(exc))}", file=sys.stderr)
            return 2
        # ConfImportError is a ValueError, as is open_storage's bad URL.
        except (AdminError, BackupError, StorageError, ValueError) as exc:
            print(f"imreactor {name}: {_one_line(str(exc))}", file=sys.stderr)
            return 1
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            print(f"imreactor {name}: {where}{exc.strerror or exc}", file=sys.stderr)
            return 1
        return 0

    return run


def _one_line(text: str) -> str:
    # Driver messages (psycopg's) span lines; the contract is one line per error.
    return re.sub(r"\s*\n\s*", "; ", text.strip())


# -- storage -----------------------------------------------------------------------------


def data_dir(args: argparse.Namespace) -> Path:
    """The data directory the options name (``--data-dir``, else ``data``), absolute."""
    return Path(args.data_dir or DEFAULT_DATA_DIR).resolve()


def database_url(args: argparse.Namespace) -> str:
    """The storage URL the options name: ``--database``, else the data dir's (the one
    it remembers, else its SQLite file), as ``imreactor up`` finds it."""
    from .accounts import data_dir_database

    if args.database:
        url: str = args.database
        return url
    return data_dir_database(data_dir(args))


def check_database(args: argparse.Namespace, *, create: bool) -> str:
    """:func:`database_url`, or AdminError if it names no database and none may be made
    (``create`` and a ``--data-dir`` given by name make a SQLite one)."""
    from .accounts import data_dir_has_database

    url = database_url(args)
    if args.database:
        if url.startswith(SQLITE_PREFIX) and not create:
            path = Path(url[len(SQLITE_PREFIX) :])
            if not path.exists():
                raise AdminError(f"no database at {path} (wrong --data-dir or --database?)")
        return url
    here = data_dir(args)
    if data_dir_has_database(here):
        return url
    if not create:
        raise AdminError(
            f"no database at {here / 'imreactor.db'} (wrong --data-dir or --database?)"
        )
    if args.data_dir is None:
        raise AdminError(
            f"no database in {here}: imreactor up makes one there; to make one now,"
            " name the data dir (--data-dir DIR) or the database (--database URL)"
        )
    return url


@contextmanager
def opened(args: argparse.Namespace, *, create: bool) -> Iterator[Storage]:
    """The storage of ``args``, closed on exit; see :func:`check_database`."""
    from .storage import open_storage

    url = check_database(args, create=create)
    if url.startswith(SQLITE_PREFIX) and create:
        Path(url[len(SQLITE_PREFIX) :]).parent.mkdir(parents=True, exist_ok=True)
    store = open_storage(url)
    try:
        yield store
    finally:
        store.close()


def _digest(password: str) -> str:
    from .pdu.password import password_digest

    if not password:
        raise AdminError("the password must not be empty")
    return password_digest(password)


def _user_id(store: Storage, name: str) -> int:
    user = store.user_by_name(name)
    if user is None:
        raise AdminError(f"no user {name!r}")
    return user.user_id


def _check_department(store: Storage, dept_id: int) -> None:
    if dept_id < 0:
        raise AdminError(f"department id {dept_id} is negative")
    if dept_id and all(d.dept_id != dept_id for d in store.departments_updated_since(0)):
        raise AdminError(f"no department {dept_id} (imreactor dept list shows them)")


def _user_add(args: argparse.Namespace) -> None:
    from .storage import ConflictError

    digest = _digest(args.password)
    with opened(args, create=True) as store:
        _check_department(store, args.department)
        try:
            user = store.add_user(
                args.name,
                digest,
                nick=args.name if args.nick is None else args.nick,
                department_id=args.department,
            )
        except ConflictError:
            raise AdminError(f"user name {args.name!r} is taken") from None
    print(f"added user {user.name} (id {user.user_id})")


def _user_list(args: argparse.Namespace) -> None:
    with opened(args, create=False) as store:
        users = store.list_users()
    _table(
        ["ID", "NAME", "NICK", "DEPT"],
        [[str(u.user_id), u.name, u.nick, str(u.department_id)] for u in users],
    )


def _user_passwd(args: argparse.Namespace) -> None:
    digest = _digest(args.password)
    with opened(args, create=False) as store:
        if not store.change_password(_user_id(store, args.name), digest):
            raise AdminError(f"no user {args.name!r}")  # deleted between the two calls
    print(f"changed the password of {args.name}")


def _set_disabled(args: argparse.Namespace, disabled: bool) -> int:
    with opened(args, create=False) as store:
        user_id = _user_id(store, args.name)
        if not store.set_disabled(user_id, disabled):
            raise AdminError(f"no user {args.name!r}")  # deleted between the two calls
    return user_id


def _user_disable(args: argparse.Namespace) -> None:
    user_id = _set_disabled(args, True)
    # Stored first: a session closed now cannot log in again.
    print(f"disabled user {args.name}; {_close_sessions(args, user_id)}")


def _user_del(args: argparse.Namespace) -> None:
    with opened(args, create=False) as store:
        user_id = _user_id(store, args.name)
        if not store.delete_users([user_id]):
            raise AdminError(f"no user {args.name!r}")  # deleted between the two calls
    print(f"deleted user {args.name} (id {user_id}); {_close_sessions(args, user_id)}")


def _user_enable(args: argparse.Namespace) -> None:
    _set_disabled(args, False)
    print(f"enabled user {args.name}")


def _login_config_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--login-config",
        metavar="FILE",
        help="login_server's TOML ([login]: where it listens for msg_servers, its link keys),"
        " to close the user's open sessions (default: DIR/login_server.toml of --data-dir)",
    )


def _close_sessions(args: argparse.Namespace, user_id: int) -> str:
    """Ask login_server to close every session of ``user_id``; what happened, as the
    end of the command's line. AdminError if it cannot be asked (nor known absent)."""
    from .adminlink import SessionsError, close_sessions

    path = Path(args.login_config) if args.login_config else None
    if path is None:
        if args.database and not args.data_dir:
            return "no --data-dir or --login-config: open sessions, if any, were not closed"
        path = data_dir(args) / "login_server.toml"
        if not path.exists():
            return f"no {path}: no suite was started here, so no open session to close"
    try:
        return close_sessions(path, user_id)
    except SessionsError as exc:
        raise AdminError(f"{exc} (the account change is stored)") from None


def _dept_add(args: argparse.Namespace) -> None:
    if not args.name.strip():
        raise AdminError("the department name must not be empty")
    with opened(args, create=True) as store:
        _check_department(store, args.parent)
        dept = store.add_department(args.name, priority=args.priority, parent_id=args.parent)
    print(f"added department {dept.name} (id {dept.dept_id})")


def _dept_list(args: argparse.Namespace) -> None:
    with opened(args, create=False) as store:
        depts = store.departments_updated_since(0)
    _table(
        ["ID", "NAME", "PARENT", "PRIORITY"],
        [[str(d.dept_id), d.name, str(d.parent_id), str(d.priority)] for d in depts],
    )


def _group_add(args: argparse.Namespace) -> None:
    from .storage import GroupType

    if not args.name.strip():
        raise AdminError("the group name must not be empty")
    names = list(dict.fromkeys(n.strip() for n in args.members.split(",") if n.strip()))
    with opened(args, create=True) as store:
        creator = _user_id(store, args.creator)
        members: list[int] = []
        unknown: list[str] = []
        for name in names:
            user = store.user_by_name(name)
            if user is None:
                unknown.append(name)
            else:
                members.append(user.user_id)
        if unknown:
            noun = "user" if len(unknown) == 1 else "users"
            raise AdminError(f"no {noun} {', '.join(map(repr, unknown))}")
        group = store.create_group(
            creator, args.name, group_type=GroupType.NORMAL, member_ids=members
        )
    print(f"added group {group.name} (id {group.group_id}, {len(group.members)} members)")


def _group_list(args: argparse.Namespace) -> None:
    with opened(args, create=False) as store:
        groups = store.list_groups()
    _table(
        ["ID", "NAME", "TYPE", "CREATOR", "MEMBERS", "VERSION"],
        [
            [
                *(str(g.group_id), g.name, g.group_type.name.lower(), str(g.creator_id)),
                *(str(len(g.members)), str(g.version)),
            ]
            for g in groups
        ],
    )


def _group_members(args: argparse.Namespace) -> None:
    text = args.group.strip()
    with opened(args, create=False) as store:
        groups = store.list_groups()
        if text.isdigit():
            found = [g for g in groups if g.group_id == int(text)]
        else:
            found = [g for g in groups if g.name == text]
        if not found:
            raise AdminError(f"no group {text!r} (imreactor group list shows them)")
        if len(found) > 1:
            ids_ = ", ".join(str(g.group_id) for g in found)
            raise AdminError(f"{len(found)} groups are named {text!r} (ids {ids_}); give its id")
        users = {u.user_id: u for u in store.get_users(found[0].members)}
    _table(
        ["ID", "NAME", "NICK"],
        [
            [str(uid), users[uid].name, users[uid].nick] if uid in users else [str(uid), "?", ""]
            for uid in found[0].members
        ],
    )


def _backup(args: argparse.Namespace) -> None:
    from .backup import backup

    url = check_database(args, create=False)
    print(backup(url, Path(args.file)))


def _restore(args: argparse.Namespace) -> None:
    from .backup import restore

    url = check_database(args, create=True) if args.data_dir else database_url(args)
    if args.database and not args.data_dir:
        print(restore(url, Path(args.file)))
        return
    from .servers.suite import SuiteError, lock_data_dir

    here = data_dir(args)
    if not here.is_dir():
        raise AdminError(f"no data dir {here}")
    try:
        lock = lock_data_dir(here)  # held while restoring: no `up` starts meanwhile
    except SuiteError as exc:
        raise AdminError(f"{exc}; stop it before restoring") from None
    try:
        print(restore(url, Path(args.file)))
    finally:
        lock.close()


def _table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


# -- configuration -----------------------------------------------------------------------


def _config_defaults(args: argparse.Namespace) -> None:
    roles = [args.role] if args.role else list(ROLES)
    print("# Every key may be left out; these are the defaults.")
    print("\n".join(describe(ROLES[role], role) for role in roles), end="")


def _config_check(args: argparse.Namespace) -> None:
    """Read the file as the servers would: every refusal is a ConfigError (status 2)."""
    import tomllib

    try:
        with open(args.file, "rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:  # what a server given this file exits on, too
        raise ConfigError(f"{args.file}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{args.file}: {exc}") from None
    unknown = sorted(set(doc) - set(ROLES))
    if unknown:
        raise ConfigError(
            f"{args.file}: unknown table(s) or key(s) {', '.join(unknown)}"
            f" (tables are {', '.join(ROLES)})"
        )
    if args.role and args.role not in doc:
        raise ConfigError(f"{args.file}: no [{args.role}] table")
    for role, table in doc.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{args.file}: {role} must be a table")
        try:
            from_mapping(ROLES[role], table, role)
        except ConfigError as exc:
            raise ConfigError(f"{args.file}: {exc}") from None
    print(f"{args.file}: ok ({', '.join(f'[{r}]' for r in doc) or 'empty: all defaults'})")


def _config_import(args: argparse.Namespace) -> None:
    with open(args.file, "rb") as f:
        data = f.read()
    print(render(import_conf(data, args.role, args.file)), end="")
