"""``imreactor user|dept|group``: real processes on SQLite and PostgreSQL, and beside ``up``.

Every command is run as ``python -m imreactor ...`` in a subprocess; what it stored is
checked by opening the same database, and with a running ``imreactor up`` by logging in.
Every refusal must be one line on stderr, a non-zero status and no traceback.
"""

from __future__ import annotations

import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from servers.conftest import free_ports

from imreactor.accounts import remember_database
from imreactor.client import Client, ClientError
from imreactor.pdu.password import password_digest
from imreactor.storage import GroupType, Storage, open_storage

CLI_TIMEOUT_S = 60


def imreactor(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``imreactor ARGS`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "imreactor", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=CLI_TIMEOUT_S,
    )


def ok(*args: str, cwd: Path | None = None) -> str:
    """Run ``imreactor ARGS``; it must succeed. Its stdout."""
    res = imreactor(*args, cwd=cwd)
    assert res.returncode == 0, f"{args}: {res.returncode}\n{res.stdout}\n{res.stderr}"
    return res.stdout


def refused(*args: str, status: int = 1, cwd: Path | None = None) -> str:
    """Run ``imreactor ARGS``; it must fail with ``status``. Its stderr's last line."""
    res = imreactor(*args, cwd=cwd)
    assert res.returncode == status, f"{args}: {res.returncode}\n{res.stdout}\n{res.stderr}"
    assert "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.strip().splitlines()
    if status == 1:
        assert len(lines) == 1, res.stderr  # usage errors (2) are argparse's two lines
    return lines[-1]


@pytest.fixture(params=["sqlite", "postgres"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> list[str]:
    """The storage options of a command: a data directory, or a PostgreSQL URL."""
    if request.param == "sqlite":
        return ["--data-dir", str(tmp_path / "data")]
    url: str = request.getfixturevalue("postgres_url")
    return ["--database", url]


@contextmanager
def stored(where: list[str]) -> Iterator[Storage]:
    """The database ``where`` names, opened in this process."""
    url = where[1] if where[0] == "--database" else f"sqlite:///{Path(where[1]) / 'imreactor.db'}"
    store = open_storage(url)
    try:
        yield store
    finally:
        store.close()


# -- what the commands store ----------------------------------------------------------------


def test_user_add_list_passwd(where: list[str]) -> None:
    assert ok("user", "add", "alice", "--password", "s3cret", "--nick", "Alice", *where) == (
        "added user alice (id 1)\n"
    )
    ok("user", "add", "bob", "--password", "pw", *where)
    with stored(where) as store:
        alice = store.validate_user("alice", password_digest("s3cret"))
        bob = store.user_by_name("bob")
    assert alice is not None and alice.nick == "Alice"
    assert bob is not None and bob.nick == "bob"  # the nick defaults to the name

    lines = ok("user", "list", *where).splitlines()
    assert lines[0].split() == ["ID", "NAME", "NICK", "DEPT"]
    assert [line.split() for line in lines[1:]] == [
        ["1", "alice", "Alice", "0"],
        ["2", "bob", "bob", "0"],
    ]

    assert ok("user", "passwd", "alice", "--password", "new one", *where) == (
        "changed the password of alice\n"
    )
    with stored(where) as store:
        assert store.validate_user("alice", password_digest("new one")) is not None
        assert store.validate_user("alice", password_digest("s3cret")) is None

    assert ok("user", "disable", "bob", *where) == "disabled user bob\n"
    with stored(where) as store:
        assert store.validate_user("bob", password_digest("pw")) is None
    assert ok("user", "enable", "bob", *where) == "enabled user bob\n"
    with stored(where) as store:
        assert store.validate_user("bob", password_digest("pw")) is not None


def test_departments_and_a_user_in_one(where: list[str]) -> None:
    assert ok("dept", "add", "Engineering", *where) == "added department Engineering (id 1)\n"
    ok("dept", "add", "Network", "--parent", "1", "--priority", "7", *where)
    ok("user", "add", "carol", "--password", "pw", "--department", "2", *where)
    with stored(where) as store:
        depts = store.departments_updated_since(0)
        carol = store.user_by_name("carol")
    assert [(d.dept_id, d.name, d.parent_id, d.priority) for d in depts] == [
        (1, "Engineering", 0, 0),
        (2, "Network", 1, 7),
    ]
    assert carol is not None and carol.department_id == 2
    rows = [line.split() for line in ok("dept", "list", *where).splitlines()]
    assert rows == [
        ["ID", "NAME", "PARENT", "PRIORITY"],
        ["1", "Engineering", "0", "0"],
        ["2", "Network", "1", "7"],
    ]


def test_group_add_creates_a_normal_group(where: list[str]) -> None:
    for name in ("alice", "bob", "carol"):
        ok("user", "add", name, "--password", "pw", *where)
    out = ok(
        "group", "add", "Ops team", "--creator", "alice", "--members", "bob, carol,bob,", *where
    )
    assert out == "added group Ops team (id 1, 3 members)\n"
    ok("group", "add", "Solo", "--creator", "bob", *where)
    with stored(where) as store:
        info, solo = store.group_infos([1, 2], 1)
    assert info.name == "Ops team"
    assert info.group_type is GroupType.NORMAL
    assert info.creator_id == 1
    assert info.members == (1, 2, 3)
    assert solo.name == "Solo" and solo.members == (2,)
    assert solo.group_type is GroupType.NORMAL


def test_default_data_dir_is_the_one_imreactor_up_uses(tmp_path: Path) -> None:
    ok("user", "add", "alice", "--password", "pw", cwd=tmp_path)
    assert (tmp_path / "data" / "imreactor.db").is_file()
    assert "alice" in ok("user", "list", cwd=tmp_path)
    assert "alice" in ok("user", "list", "--data-dir", str(tmp_path / "data"))


def test_a_data_dir_remembers_the_database_it_was_given(tmp_path: Path) -> None:
    # As `imreactor up --database URL --data-dir DIR` leaves it: the admin commands given
    # DIR use URL, not a new DIR/imreactor.db.
    data = tmp_path / "data"
    data.mkdir()
    elsewhere = tmp_path / "elsewhere.db"
    remember_database(data, f"sqlite:///{elsewhere}")
    assert (data / "database.url").stat().st_mode & 0o777 == 0o600
    ok("user", "add", "alice", "--password", "pw", "--data-dir", str(data))
    assert not (data / "imreactor.db").exists()
    with stored(["--database", f"sqlite:///{elsewhere}"]) as store:
        assert store.user_by_name("alice") is not None
    assert "alice" in ok("user", "list", "--data-dir", str(data))


# -- refusals -------------------------------------------------------------------------------


def test_refusals_name_the_problem(where: list[str]) -> None:
    ok("user", "add", "alice", "--password", "pw", *where)
    ok("user", "add", "bob", "--password", "pw", *where)
    cases = [
        (("user", "add", "alice", "--password", "x"), "user name 'alice' is taken"),
        (("user", "add", "dan", "--password", ""), "the password must not be empty"),
        (("user", "add", "dan", "--password", "x", "--department", "9"), "no department 9"),
        (("user", "add", "", "--password", "x"), "user name must not be empty"),
        (("user", "passwd", "zed", "--password", "x"), "no user 'zed'"),
        (("user", "passwd", "alice", "--password", ""), "the password must not be empty"),
        (("user", "disable", "zed"), "no user 'zed'"),
        (("user", "enable", "zed"), "no user 'zed'"),
        (("dept", "add", "Ops", "--parent", "4"), "no department 4"),
        (("dept", "add", " "), "the department name must not be empty"),
        (("group", "add", "G", "--creator", "zed"), "no user 'zed'"),
        (("group", "add", "G", "--creator", "alice", "--members", "bob,x,y"), "no users 'x', 'y'"),
        (("group", "add", "", "--creator", "alice"), "the group name must not be empty"),
    ]
    for args, message in cases:
        line = refused(*args, *where)
        assert line.startswith(f"imreactor {args[0]} {args[1]}: {message}"), (args, line)
    # Nothing of the refused commands was stored.
    with stored(where) as store:
        assert [u.name for u in store.list_users()] == ["alice", "bob"]
        assert store.departments_updated_since(0) == []
        assert store.groups_of_user(1) == []
        assert store.validate_user("alice", password_digest("pw")) is not None


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path)]
    assert "--password" in refused("user", "add", "alice", *data, status=2)
    assert "--creator" in refused("group", "add", "G", *data, status=2)
    assert "invalid int value" in refused("dept", "add", "D", "--parent", "x", *data, status=2)
    both = refused("user", "list", *data, "--database", "sqlite:///x.db", status=2)
    assert "not allowed with" in both
    assert "required" in refused("user", status=2)


def test_unusable_databases(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    assert refused("user", "list", "--data-dir", str(missing)) == (
        f"imreactor user list: no database at {missing / 'imreactor.db'}"
        " (wrong --data-dir or --database?)"
    )
    assert refused("user", "passwd", "a", "--password", "x", "--data-dir", str(missing))
    assert not missing.exists()  # only the add commands create a database

    assert "expected sqlite:///PATH or postgresql://" in refused(
        "user", "list", "--database", "mysql://root@localhost/im"
    )
    assert "a SQLite database needs a file path" in refused(
        "user", "add", "a", "--password", "x", "--database", "sqlite:///:memory:"
    )

    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "imreactor.db").write_bytes(b"this is not a database\n" * 100)
    line = refused("user", "list", "--data-dir", str(garbage))
    assert line.endswith("file is not a database"), line

    a_dir = tmp_path / "dir-db"
    (a_dir / "imreactor.db").mkdir(parents=True)
    line = refused("user", "add", "a", "--password", "x", "--data-dir", str(a_dir))
    assert "unable to open database file" in line, line

    a_file = tmp_path / "file"
    a_file.write_text("")
    line = refused("user", "add", "a", "--password", "x", "--data-dir", str(a_file / "sub"))
    assert line.endswith("Not a directory"), line

    with socket.socket() as s:  # a port nobody listens on: the connection is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    line = refused("user", "list", "--database", f"postgresql://im:pw@127.0.0.1:{port}/im")
    assert line.startswith(f"imreactor user list: postgresql 127.0.0.1:{port}/im: cannot connect")
    assert "pw" not in line.replace("postgresql", "")


# -- with the suite running ------------------------------------------------------------------


@contextmanager
def up_suite(tmp_path: Path, *extra: str) -> Iterator[tuple[Path, int]]:
    """``imreactor [EXTRA] up`` (SQLite, no demo users) in a child process, until the
    block ends: (data dir, msg port). ``extra`` goes after ``up``."""
    data = tmp_path / "data"
    http, login, msg, db, msfs, metrics, ws = free_ports(7)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "imreactor",
            "up",
            "--data-dir",
            str(data),
            "--no-demo-users",
            *("--http-port", str(http), "--login-port", str(login)),
            *("--msg-port", str(msg), "--db-port", str(db), "--msfs-port", str(msfs)),
            *("--metrics-port", str(metrics), "--ws-port", str(ws)),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    output = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.5)
            if ready:
                line = proc.stdout.readline()
                output.append(line)
                if line.startswith("imreactor suite is up") or not line:
                    break
        assert output and output[-1].startswith("imreactor suite is up"), "".join(output)
        yield data, msg
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def running_suite(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """:func:`up_suite` with the defaults."""
    with up_suite(tmp_path) as running:
        yield running


def login(port: int, name: str, password: str) -> tuple[Client, int]:
    """A connection and its login result; retries while msg_server links to its peers."""
    deadline = time.monotonic() + 15
    while True:
        c = Client.connect("127.0.0.1", port)
        code = int(c.login(name, password, check=False).result_code)
        if code not in (3, 4) or time.monotonic() > deadline:
            return c, code
        c.close()
        time.sleep(0.1)


def test_commands_work_while_the_suite_runs_and_writes(running_suite: tuple[Path, int]) -> None:
    data, port = running_suite
    where = ["--data-dir", str(data)]
    ok("user", "add", "alice", "--password", "a-pw", *where)
    ok("user", "add", "bob", "--password", "b-pw", *where)
    alice, code = login(port, "alice", "a-pw")
    assert code == 0
    bob, code = login(port, "bob", "b-pw")
    assert code == 0

    # db_proxy_server keeps writing messages while the commands write the same database.
    stop = threading.Event()
    acked: list[int] = []
    errors: list[BaseException] = []

    def send() -> None:
        try:
            while not stop.wait(0.02):  # well inside msg_server's rate limit
                acked.append(alice.send_text(bob.user_id, f"m{len(acked)}").msg_id)
        except (ClientError, OSError) as exc:
            errors.append(exc)

    sender = threading.Thread(target=send)
    sender.start()
    try:
        for i in range(3):
            ok("user", "add", f"user{i}", "--password", "pw", *where)
        ok("dept", "add", "Engineering", *where)
        ok("group", "add", "All", "--creator", "alice", "--members", "bob,user0", *where)
        ok("user", "passwd", "bob", "--password", "b-new", *where)
    finally:
        stop.set()
        sender.join(30)
    assert not errors, errors
    assert len(acked) > 10 and acked == list(range(1, len(acked) + 1))

    # The running servers see what the commands stored.
    names = [line.split()[1] for line in ok("user", "list", *where).splitlines()[1:]]
    assert names == ["alice", "bob", "user0", "user1", "user2"]
    c, code = login(port, "user1", "pw")
    assert code == 0
    c.close()
    c, code = login(port, "bob", "b-pw")
    assert code != 0  # the old password is refused ...
    c.close()
    c, code = login(port, "bob", "b-new")
    assert code == 0  # ... and the new one accepted
    c.close()
    # A disabled account is refused at once, although its credential was verified
    # moments ago; enabled again, it logs in.
    assert ok("user", "disable", "user1", *where) == "disabled user user1\n"
    c, code = login(port, "user1", "pw")
    assert code == 6  # REFUSE_REASON_DB_VALIDATE_FAILED, as for a wrong password
    c.close()
    assert ok("user", "enable", "user1", *where) == "enabled user user1\n"
    c, code = login(port, "user1", "pw")
    assert code == 0
    c.close()
    alice.close()
    bob.close()
