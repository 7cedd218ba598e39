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
from servers.conftest import free_port_run, free_ports

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

    assert ok("user", "disable", "bob", *where).startswith("disabled user bob; ")
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
    # Run where no suite ever was, the commands refuse instead of making ./data/imreactor.db.
    line = refused("user", "add", "alice", "--password", "pw", cwd=tmp_path)
    assert line == (
        f"imreactor user add: no database in {tmp_path.resolve() / 'data'}: imreactor up makes"
        " one there; to make one now, name the data dir (--data-dir DIR) or the database"
        " (--database URL)"
    )
    assert "no database at" in refused("user", "list", cwd=tmp_path)
    assert not (tmp_path / "data").exists()
    # Named, the data dir gets its database; then `data` in that directory is the default.
    ok("user", "add", "alice", "--password", "pw", "--data-dir", "data", cwd=tmp_path)
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
    http, login, msg, db, msfs, ws = free_ports(6)
    metrics = free_port_run(4)  # one per server from here up
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
    assert ok("user", "disable", "user1", *where).startswith("disabled user user1; ")
    c, code = login(port, "user1", "pw")
    assert code == 6  # REFUSE_REASON_DB_VALIDATE_FAILED, as for a wrong password
    c.close()
    assert ok("user", "enable", "user1", *where) == "enabled user user1\n"
    c, code = login(port, "user1", "pw")
    assert code == 0
    c.close()
    alice.close()
    bob.close()


# -- closing sessions, deleting users, groups ----------------------------------------------


def test_disable_and_del_close_the_users_open_sessions(running_suite: tuple[Path, int]) -> None:
    data, port = running_suite
    where = ["--data-dir", str(data)]
    for name in ("alice", "bob", "carol"):
        ok("user", "add", name, "--password", "pw", *where)
    alice, code = login(port, "alice", "pw")
    assert code == 0
    alice_too, code = login(port, "alice", "pw")  # a second session: both must close
    bob, code = login(port, "bob", "pw")
    carol, code = login(port, "carol", "pw")
    assert code == 0

    out = ok("user", "disable", "alice", *where)
    assert out.startswith("disabled user alice; login_server at 127.0.0.1:"), out
    assert out.rstrip().endswith("closed its open sessions"), out
    assert alice.wait_closed(15) and alice_too.wait_closed(15)
    again, code = login(port, "alice", "pw")
    assert code == 6  # refused, as for a wrong password
    again.close()
    # The others were not touched.
    assert bob.send_text(carol.user_id, "still here").msg_id == 1

    out = ok("user", "del", "bob", *where)
    assert out.startswith(f"deleted user bob (id {bob.user_id}); login_server at"), out
    assert bob.wait_closed(15)
    again, code = login(port, "bob", "pw")
    assert code == 6
    again.close()
    names = [line.split()[1] for line in ok("user", "list", *where).splitlines()[1:]]
    assert names == ["alice", "carol"]
    # carol keeps what bob said.
    history = carol.history(bob.user_id, count=10)
    assert [m.msg_id for m in history.msg_list] == [1]
    assert carol.send_text(alice.user_id, "to a disabled user").msg_id == 1
    for c in (alice, alice_too, bob, carol):
        c.close()

    # A login_server that will not authenticate us is reported, the change still stored.
    foreign = data.parent / "foreign"
    foreign.mkdir()
    from imreactor import pki

    ca, link = pki.link_files(foreign)  # another cluster's CA and certificate
    login_toml = (data / "login_server.toml").read_text()
    for key, path in [("link_ca_file", ca.cert), ("link_cert_file", link.cert)]:
        login_toml = "\n".join(
            f'{key} = "{path}"' if line.startswith(f"{key} =") else line
            for line in login_toml.splitlines()
        )
    login_toml = "\n".join(
        f'link_key_file = "{link.key}"' if line.startswith("link_key_file =") else line
        for line in login_toml.splitlines()
    )
    (foreign / "login.toml").write_text(login_toml)
    ok("user", "add", "dave", "--password", "pw", *where)
    line = refused("user", "disable", "dave", *where, "--login-config", str(foreign / "login.toml"))
    assert line.startswith("imreactor user disable: login_server at 127.0.0.1:"), line
    assert line.endswith("(the account change is stored)"), line
    dave, code = login(port, "dave", "pw")
    assert code == 6
    dave.close()


def test_login_server_survives_a_malformed_kick_request(running_suite: tuple[Path, int]) -> None:
    import ssl

    from imreactor.adminlink import close_sessions
    from imreactor.config import load
    from imreactor.pdu.header import encode_pdu
    from imreactor.pdu.proto import im_server_pb2
    from imreactor.pdu.registry import ids_of
    from imreactor.servers.linkauth import link_client_context
    from imreactor.servers.login.config import LoginConfig

    data, _ = running_suite
    config = load(LoginConfig, data / "login_server.toml", "login")
    context = link_client_context(config, "login")
    assert context is not None
    service, command = ids_of(im_server_pb2.IMServerKickUser)
    raw = socket.create_connection(("127.0.0.1", config.msg_server_port), 10)
    with context.wrap_socket(raw) as link:
        link.sendall(encode_pdu(service, command, 1, b"\xff\xff\xff"))  # not protobuf
        link.sendall(encode_pdu(service, command, 2, b""))  # required fields missing
        link.settimeout(2)
        with pytest.raises((TimeoutError, ssl.SSLError, OSError)):
            if not link.recv(100):  # nothing answers a malformed request
                raise OSError("closed")
    # login_server still serves the well-formed request.
    assert close_sessions(data / "login_server.toml", 12345).endswith("closed its open sessions")


def test_group_list_and_members(where: list[str]) -> None:
    for name in ("alice", "bob", "carol"):
        ok("user", "add", name, "--password", "pw", "--nick", name.title(), *where)
    ok("group", "add", "Ops", "--creator", "alice", "--members", "bob", *where)
    ok("group", "add", "Twice", "--creator", "bob", *where)
    ok("group", "add", "Twice", "--creator", "carol", *where)
    rows = [line.split() for line in ok("group", "list", *where).splitlines()]
    assert rows == [
        ["ID", "NAME", "TYPE", "CREATOR", "MEMBERS", "VERSION"],
        ["1", "Ops", "normal", "1", "2", "1"],
        ["2", "Twice", "normal", "2", "1", "1"],
        ["3", "Twice", "normal", "3", "1", "1"],
    ]
    members = [["ID", "NAME", "NICK"], ["1", "alice", "Alice"], ["2", "bob", "Bob"]]
    for group in ("1", "Ops", " Ops "):
        assert [line.split() for line in ok("group", "members", group, *where).splitlines()] == (
            members
        )
    assert refused("group", "members", "Twice", *where) == (
        "imreactor group members: 2 groups are named 'Twice' (ids 2, 3); give its id"
    )
    for bad in ("9", "Nope", "", "-1"):
        line = refused("group", "members", bad, *where)
        assert line.startswith("imreactor group members: no group"), line
    ok("user", "del", "bob", *where)
    rows = [line.split() for line in ok("group", "list", *where).splitlines()]
    assert rows[1] == ["1", "Ops", "normal", "1", "1", "2"]  # one member less, a new version
    assert refused("user", "del", "bob", *where) == "imreactor user del: no user 'bob'"
    assert "required" in refused("group", "members", *where, status=2)
    assert "required" in refused("user", "del", *where, status=2)


# -- the load generator's users ---------------------------------------------------------------


def test_load_cleanup_removes_the_load_users_and_only_them(where: list[str]) -> None:
    from imreactor.accounts import LOAD_ORIGIN, create_users

    ok("user", "add", "alice", "--password", "pw", *where)
    ok("user", "add", "load7", "--password", "pw", *where)  # named like them, made by hand
    with stored(where) as store:
        url = where[1] if where[0] == "--database" else None
        del store
    database = url or f"sqlite:///{Path(where[1]) / 'imreactor.db'}"
    made = create_users(database, ["load0", "load1", "load2"], "pw", origin=LOAD_ORIGIN)
    assert made == ["load0", "load1", "load2"]
    ok("group", "add", "G", "--creator", "alice", "--members", "load1", *where)
    res = imreactor("load", "--cleanup", *where)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "deleted 3 users made by imreactor load --create-users\n"
    names = [line.split()[1] for line in ok("user", "list", *where).splitlines()[1:]]
    assert names == ["alice", "load7"]
    assert ok("load", "--cleanup", *where) == (
        "deleted 0 users made by imreactor load --create-users\n"
    )


def test_load_cleanup_refusals(tmp_path: Path) -> None:
    res = imreactor("load", "--cleanup")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip() == "imreactor load: --cleanup: needs --database or --data-dir"
    res = imreactor("load", "--cleanup", "--data-dir", str(tmp_path / "nowhere"))
    assert res.returncode == 2
    assert res.stderr.strip() == (
        f"imreactor load: --cleanup: no database in {tmp_path / 'nowhere'}"
        " (imreactor up makes one there)"
    )
    res = imreactor("load", "--cleanup", "--database", "mysql://x")
    assert res.returncode == 1 and "expected sqlite:///PATH or postgresql://" in res.stderr
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database\n" * 100)
    res = imreactor("load", "--cleanup", "--database", f"sqlite:///{garbage}")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.strip().endswith("file is not a database"), res.stderr


def test_load_create_users_marks_them_for_cleanup(running_suite: tuple[Path, int]) -> None:
    data, port = running_suite
    where = ["--data-dir", str(data)]
    ok("user", "add", "alice", "--password", "pw", *where)
    res = imreactor(
        *("load", "--msg-server", f"127.0.0.1:{port}", "--users", "4", "--pairs", "2"),
        *("--count", "3", "--create-users", "--no-progress", *where),
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "created 4 users" in res.stderr
    assert ok("load", "--cleanup", *where) == (
        "deleted 4 users made by imreactor load --create-users\n"
    )
    names = [line.split()[1] for line in ok("user", "list", *where).splitlines()[1:]]
    assert names == ["alice"]


# -- backup and restore ---------------------------------------------------------------------


def test_backup_and_restore_bring_back_users_and_messages(
    where: list[str], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    from imreactor.storage import MsgType, NewMessage, SessionType

    ok("user", "add", "alice", "--password", "pw", *where)
    ok("user", "add", "bob", "--password", "pw", *where)
    with stored(where) as store:
        for i in range(5):
            store.insert_message(NewMessage(1, 2, MsgType.SINGLE_TEXT, f"m{i}".encode()))
    file = tmp_path / "backup.bin"
    out = ok("backup", str(file), *where)
    assert out.startswith("backed up ") and f" to {file} (" in out, out
    assert "pw@" not in out  # a PostgreSQL URL's password is not printed
    assert not (tmp_path / "backup.bin.partial").exists()
    assert (
        refused("backup", str(file), *where)
        == f"imreactor backup: {file} exists; give a new file name"
    )

    # After the backup: a message more, a user gone, a user more.
    with stored(where) as store:
        store.insert_message(NewMessage(2, 1, MsgType.SINGLE_TEXT, b"after"))
    ok("user", "del", "bob", *where)
    ok("user", "add", "carol", "--password", "pw", *where)

    out = ok("restore", str(file), *where)
    assert out.startswith("restored ") and "(schema version 3)" in out, out
    with stored(where) as store:
        assert [u.name for u in store.list_users()] == ["alice", "bob"]
        history = store.get_msg_list(1, SessionType.SINGLE, 2, 0, 50)
        assert [m.msg_data for m in reversed(history)] == [f"m{i}".encode() for i in range(5)]
        # The id counter came back too: the next message continues after m4.
        assert store.insert_message(NewMessage(2, 1, MsgType.SINGLE_TEXT, b"new")).msg_id == 6
        assert store.validate_user("bob", password_digest("pw")) is not None

    # Into a new, empty database (another machine): the same data.
    if where[0] == "--database":
        fresh = ["--database", request.getfixturevalue("postgres_server").create_database()]
    else:
        fresh = ["--data-dir", str(tmp_path / "fresh")]
        (tmp_path / "fresh").mkdir()
    ok("restore", str(file), *fresh)
    with stored(fresh) as store:
        assert [u.name for u in store.list_users()] == ["alice", "bob"]
        assert len(store.get_msg_list(1, SessionType.SINGLE, 2, 0, 50)) == 5


def test_backup_and_restore_refusals(where: list[str], tmp_path: Path) -> None:
    ok("user", "add", "alice", "--password", "pw", *where)
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"hello\n" * 10)
    assert refused("restore", str(garbage), *where) == (
        f"imreactor restore: {garbage} is not a backup"
        " (neither a SQLite file nor a pg_dump archive)"
    )
    assert refused("restore", str(tmp_path / "missing"), *where) == (
        f"imreactor restore: {tmp_path / 'missing'}: No such file or directory"
    )
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert "is not a backup" in refused("restore", str(empty), *where)
    # A backup of the other kind of database.
    other = tmp_path / "other.db"
    import sqlite3

    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    truncated = tmp_path / "truncated"
    truncated.write_bytes(b"PGDMP" + b"\x00" * 50)
    if where[0] == "--database":
        assert refused("restore", str(other), *where) == (
            f"imreactor restore: {other} is a SQLite backup; the database is PostgreSQL"
        )
        line = refused("restore", str(truncated), *where)
        assert line.startswith("imreactor restore: pg_restore failed:"), line
    else:
        assert refused("restore", str(other), *where) == (
            f"imreactor restore: {other} is a SQLite file but not an imreactor database"
        )
        assert refused("restore", str(truncated), *where) == (
            f"imreactor restore: {truncated} is a PostgreSQL backup; the database is SQLite"
        )
    # Nothing was replaced by the refused restores.
    with stored(where) as store:
        assert [u.name for u in store.list_users()] == ["alice"]
    nowhere = ["--data-dir", str(tmp_path / "nowhere")]
    assert "no database at" in refused("backup", str(tmp_path / "b"), *nowhere)
    assert "required" in refused("backup", status=2)
    assert "required" in refused("restore", status=2)


def test_restore_refuses_while_the_suite_runs(running_suite: tuple[Path, int]) -> None:
    data, _ = running_suite
    where = ["--data-dir", str(data)]
    ok("user", "add", "alice", "--password", "pw", *where)
    file = data.parent / "backup.db"
    ok("backup", str(file), *where)  # online: fine while it runs
    line = refused("restore", str(file), *where)
    assert line.startswith(f"imreactor restore: a suite is already running in {data} (pid "), line
    assert line.endswith("; stop it before restoring"), line


def test_disable_closes_sessions_on_every_msg_server_of_a_cluster(tmp_path: Path) -> None:
    from servers.conftest import start_suite

    database = f"sqlite:///{tmp_path / 'im.db'}"
    suite = start_suite(tmp_path / "data", database, msg_servers=2)
    try:
        alice = suite.login("alice", server=0)
        bob = suite.login("bob", server=1)
        carol = suite.login("carol", server=1)
        login_config = str(suite.layout.data_dir / "login_server.toml")
        for name in ("alice", "bob"):
            out = ok(
                "user", "disable", name, "--database", database, "--login-config", login_config
            )
            assert out.rstrip().endswith("closed its open sessions"), out
        assert alice.wait_closed(15) and bob.wait_closed(15)
        assert carol.send_text(alice.user_id, "carol is still here").msg_id == 1
        for server, name in ((1, "alice"), (0, "bob")):
            c = suite.client(server)
            assert c.login(name, "imreactor", check=False).result_code == 6
        # Without a data dir or --login-config, nothing says where login_server is.
        out = ok("user", "enable", "alice", "--database", database)
        assert out == "enabled user alice\n"
        out = ok("user", "disable", "alice", "--database", database)
        assert out == (
            "disabled user alice; no --data-dir or --login-config: open sessions, if any,"
            " were not closed\n"
        )
        missing = tmp_path / "missing.toml"
        line = refused(
            "user", "disable", "carol", "--database", database, "--login-config", str(missing)
        )
        assert line.startswith(f"imreactor user disable: {missing}: cannot read"), line
    finally:
        suite.stop()
