"""``imreactor chat`` in real terminals (pexpect ptys), and ``send`` / ``history`` for scripts,
against a real suite (SQLite).

prompt_toolkit asks the terminal for the cursor position; a pty under pexpect
does not answer, so the children run with ``PROMPT_TOOLKIT_NO_CPR=1``.
"""

from __future__ import annotations

import io
import os
import queue
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest
from servers.conftest import RunningSuite, free_ports

from imreactor.client import Client
from imreactor.client.chat import display_name, when
from imreactor.client.msfs import download
from imreactor.pdu.password import password_digest
from imreactor.pdu.proto import im_base_define_pb2 as base
from imreactor.pdu.proto import im_buddy_pb2 as buddy
from imreactor.pdu.proto import im_login_pb2 as login_pb
from imreactor.pdu.proto import im_message_pb2 as msg_pb
from imreactor.servers.suite import DEMO_PASSWORD
from imreactor.storage import open_storage
from imreactor.storage.records import NewMessage

from .recording_proxy import Locator, RecordingProxy

sqlite_only = pytest.mark.parametrize("database", ["sqlite"], indirect=True)

EXPECT_TIMEOUT_S = 15


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMREACTOR_")}
    env.update(PROMPT_TOOLKIT_NO_CPR="1", TERM="xterm", PYTHONUNBUFFERED="1")
    return env


class Terminals:
    """Spawns ``imreactor`` commands in ptys and closes whatever is left at the end."""

    def __init__(self, suite: RunningSuite) -> None:
        self.suite = suite
        self.children: list[pexpect.spawn[str]] = []

    def chat(
        self, user: str, password: str = DEMO_PASSWORD, url: str | None = None
    ) -> pexpect.spawn[str]:
        """``imreactor chat`` as ``user``, asking ``url`` (default: the suite's login_server)."""
        child = pexpect.spawn(
            sys.executable,
            [
                *("-m", "imreactor", "--log-level", "WARNING", "chat"),
                *("--user", user, "--password", password),
                *("--login-url", url or self.suite.http_url),
            ],
            env=_env(),
            dimensions=(50, 200),
            encoding="utf-8",
            timeout=EXPECT_TIMEOUT_S,
        )
        self.children.append(child)
        return child

    def close(self) -> None:
        for child in self.children:
            if child.isalive():
                child.terminate(force=True)


@pytest.fixture
def terminals(suite: RunningSuite) -> Iterator[Terminals]:
    t = Terminals(suite)
    _wait_ready(suite)
    yield t
    t.close()


def _wait_ready(suite: RunningSuite) -> None:
    """Until login_server offers the msg_server and a login works."""
    deadline = time.monotonic() + 15
    while True:
        try:
            with Client.via_login_server(suite.http_url) as c:
                if c.login("dave", DEMO_PASSWORD, check=False).result_code == 0:
                    return
        except Exception:
            pass
        assert time.monotonic() < deadline, "the suite did not come up"
        time.sleep(0.1)


def _exit_status(child: pexpect.spawn[str]) -> int | None:
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus


def run_cli(
    suite: RunningSuite, *args: str, url: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *(sys.executable, "-m", "imreactor", "--log-level", "WARNING"),
            *(*args, "--login-url", url or suite.http_url),
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )


@sqlite_only
def test_two_chats_talk_one_to_one_and_in_a_group(
    suite: RunningSuite, terminals: Terminals
) -> None:
    alice = terminals.chat("alice")
    alice.expect("logged in as Alice")
    alice.expect(r"contacts: Bob \(offline\), Carol \(offline\)")
    alice.expect("Alice>")
    bob = terminals.chat("bob")
    bob.expect("logged in as Bob")
    bob.expect(r"Alice \(online\)")
    alice.expect(r"\* Bob is online")

    alice.sendline("hello?")
    alice.expect("no conversation yet")
    alice.sendline("/frobnicate now")
    alice.expect(r"unknown command /frobnicate \(try /help\)")
    alice.sendline("/to zed")
    alice.expect("no user named 'zed'")

    alice.sendline("/to bob")
    alice.expect("--- Bob ---")
    alice.expect(r"\(no messages yet\)")
    alice.sendline("hello bob")
    bob.expect(r"Alice → you: hello bob   \(/to Alice to reply\)")
    bob.sendline("/to alice")
    bob.expect("--- Alice ---")
    bob.expect(r"#1 \d\d:\d\d Alice: hello bob")
    bob.sendline("hi alice, how are you?")
    alice.expect(r"\[\d\d:\d\d\] Bob: hi alice, how are you\?")
    alice.sendline("/history")
    alice.expect(r"#1 \d\d:\d\d you: hello bob\s+#2 \d\d:\d\d Bob: hi alice, how are you\?")

    alice.sendline("/newgroup lunch bob,carol")
    alice.expect(r"created group #(\d+) lunch")
    assert isinstance(alice.match, re.Match)
    gid = alice.match.group(1)
    bob.expect(rf"\* #{gid} lunch: .*joined")
    alice.sendline("noon?")
    bob.expect(rf"#{gid} lunch \| Alice: noon\?")
    bob.sendline("/groups")
    # In user-id order, which is the order the demo users' parallel creation gave them.
    bob.expect(rf"#{gid} lunch: (Alice|you|Carol), (Alice|you|Carol), (Alice|you|Carol)\r")
    assert isinstance(bob.match, re.Match)
    assert sorted(bob.match.groups()) == ["Alice", "Carol", "you"]
    bob.sendline(f"/group {gid}")
    bob.expect(f"--- #{gid} lunch ---")
    bob.sendline("noon it is")
    alice.expect(r"\] Bob: noon it is")

    bob.sendline("/who")
    bob.expect(r"contacts: Alice \(online\), Carol \(offline\), Dave \(offline\)")
    bob.sendline("/quit")
    assert _exit_status(bob) == 0
    alice.expect(r"\* Bob is offline")
    alice.sendeof()  # Ctrl-D leaves too
    assert _exit_status(alice) == 0


@sqlite_only
def test_chat_survives_a_msg_server_restart_and_ends_when_kicked(
    suite: RunningSuite, terminals: Terminals
) -> None:
    bob = terminals.chat("bob")
    bob.expect("Bob>")
    suite.restart("msg_server", hard=True)
    bob.expect(r"\* connection lost; reconnecting")
    _wait_ready(suite)
    with Client.via_login_server(suite.http_url) as alice:
        alice.login("alice", DEMO_PASSWORD)
        bob_id = next(u.user_id for u in alice.all_users().user_list if u.user_nick_name == "Bob")
        alice.send_text(bob_id, "sent while you were away")
        # Caught up after the reconnect, or live if the chat was back first.
        shown: set[int] = set()
        while len(shown) < 2:
            shown.add(bob.expect([r"Alice → you: sent while you were away", r"\* back online"]))
        alice.send_text(bob_id, "and now")
        bob.expect(r"Alice → you: and now")
    with Client.via_login_server(suite.http_url) as other:
        other.login("bob", DEMO_PASSWORD)  # the same class of client: the chat is kicked
        bob.expect(r"imreactor chat: kicked: this user logged in elsewhere")
        assert _exit_status(bob) == 1


@sqlite_only
def test_chat_watches_the_people_it_shows_and_calls_them_by_name(
    suite: RunningSuite, terminals: Terminals
) -> None:
    # The chat reaches msg_server through a recording proxy (its "login_server" points
    # there), so what it subscribes to, and when, can be read off the wire.
    proxy = RecordingProxy(("127.0.0.1", suite.layout.msg_ports[0]))
    locator = Locator("127.0.0.1", proxy.port)
    try:
        with Client.via_login_server(suite.http_url) as carol:
            carol.login("carol", DEMO_PASSWORD)
            ids = {u.user_nick_name: u.user_id for u in carol.all_users().user_list}
            carol.send_text(ids["Alice"], "are you there?")  # Carol: a recent session
        alice = terminals.chat("alice", url=locator.url)
        seen = io.StringIO()
        alice.logfile_read = seen
        alice.expect(r"contacts: Bob \(offline\), Carol \(offline, 1 unread\), Dave \(offline\)")
        alice.expect(r"Carol \(1 unread\) — Carol: are you there\?")
        alice.expect("Alice>")
        # Everyone it shows, the recent session's peer first (the watch bound keeps the
        # first ones), itself never.
        (named,) = proxy.messages(buddy.IMUsersStatReq)
        assert [list(r.user_id_list) for r in named] == [[ids["Carol"], ids["Bob"], ids["Dave"]]]

        with Client.via_login_server(suite.http_url) as bob:
            bob.login("bob", DEMO_PASSWORD)
            alice.expect(r"\* Bob is online")
        alice.expect(r"\* Bob is offline")

        # A user the chat has never heard of: named once looked up, then watched.
        store = open_storage(suite.layout.database_url)
        try:
            erin_id = store.add_user("erin", password_digest(DEMO_PASSWORD), nick="Erin").user_id
        finally:
            store.close()
        with Client.via_login_server(suite.http_url) as erin:
            erin.login("erin", DEMO_PASSWORD)
            erin.send_text(ids["Alice"], "hi, I am new")
            alice.expect(r"Erin → you: hi, I am new   \(/to Erin to reply\)")
            # Subscribed once msg_server has answered the request naming her.
            proxy.wait_for(
                lambda: any(
                    [s.user_id for s in rsp.user_stat_list] == [erin_id]
                    for rsp in proxy.messages(buddy.IMUsersStatRsp, received=True)[0]
                )
            )
        alice.expect(r"\* Erin is offline")

        # After a reconnect the SDK subscribes the same users again, in the same order.
        proxy.drop()
        alice.expect(r"\* connection lost; reconnecting")
        alice.expect(r"\* back online")
        alice.sendline("/who")  # answered after the re-subscription: it is on the wire
        alice.expect(
            r"contacts: Bob \(offline\), Carol \(offline, 1 unread\), Dave \(offline\),"
            r" Erin \(offline, 1 unread\)"
        )
        _, renewed = proxy.messages(buddy.IMUsersStatReq)
        assert [list(r.user_id_list) for r in renewed] == [
            [ids["Carol"], ids["Bob"], ids["Dave"], erin_id]
        ]
        with Client.via_login_server(suite.http_url) as bob:
            bob.login("bob", DEMO_PASSWORD)
            alice.expect(r"\* Bob is online")
        alice.sendline("/quit")
        assert _exit_status(alice) == 0
        shown = seen.getvalue()
        assert "user #" not in shown and not re.search(rf"\buser {erin_id}\b", shown)
    finally:
        locator.close()
        proxy.close()


@sqlite_only
def test_chat_shows_what_became_of_sent_messages_dates_and_people_who_joined_later(
    suite: RunningSuite, terminals: Terminals
) -> None:
    store = open_storage(suite.layout.database_url)
    try:
        ids = {u.nick: u.user_id for u in store.list_users()}
        two_days_ago = int(time.time()) - 2 * 86400
        store.insert_message(
            NewMessage(
                ids["Bob"], ids["Alice"], base.MSG_TYPE_SINGLE_TEXT, b"old news", two_days_ago
            )
        )
        alice = terminals.chat("alice")
        alice.expect("Alice>")
        # History of an earlier day carries its date; today's lines only the time.
        alice.sendline("/to bob")
        day = time.strftime("%Y-%m-%d", time.localtime(two_days_ago))
        alice.expect(rf"#1 {day} \d\d:\d\d Bob: old news")
        # Stored, and where it goes now: the protocol tells a sender no more than that.
        alice.sendline("are you there?")
        alice.expect(r"✓ #2 stored · Bob is offline: it waits for their next login")
        bob = terminals.chat("bob")
        bob.expect("Bob>")
        alice.expect(r"\* Bob is online")
        alice.sendline("now?")
        alice.expect(r"✓ #3 stored · Bob is online: passed on now")
        bob.expect(r"Alice → you: now\?")
        bob.sendline("/to alice")
        bob.expect(rf"#1 {day} \d\d:\d\d you: old news")
        bob.expect(r"#3 \d\d:\d\d Alice: now\?")

        # Someone who joined after the chat logged in is found by name, and named.
        store.add_user("erin", password_digest(DEMO_PASSWORD), nick="Erin")
        alice.sendline("/to erin")
        alice.expect("--- Erin ---")
        alice.sendline("welcome!")
        alice.expect(r"✓ #1 stored · Erin is offline")
        alice.sendline("/newgroup tea bob,erin")
        alice.expect(r"created group #\d+ tea")
        alice.sendline("tea?")
        alice.expect(r"✓ #1 stored · passed on to the members online")
        bob.expect(r"tea \| Alice: tea\?")
        alice.sendline("/quit")
        assert _exit_status(alice) == 0
    finally:
        store.close()


def test_times_of_another_day_carry_the_date() -> None:
    now = time.mktime((2026, 12, 6, 12, 0, 0, 0, 0, -1))
    assert when(int(now) - 3600, now) == "11:00"
    assert when(int(now) - 86400, now) == "2026-12-05 12:00"
    assert when(int(now) + 86400 * 40, now) == "2027-01-15 12:00"


def test_a_user_without_any_name_is_shown_by_a_marked_id() -> None:
    nameless = base.UserInfo(user_id=119)
    assert display_name(nameless) == "user #119"
    assert display_name(base.UserInfo(user_id=119, user_domain="zed")) == "zed"


@sqlite_only
def test_chat_with_a_wrong_password_says_so_and_fails(terminals: Terminals) -> None:
    child = terminals.chat("alice", "not the password")
    child.expect(r"imreactor chat: login refused: unknown user or wrong password")
    assert _exit_status(child) == 1


@sqlite_only
def test_send_prints_the_msg_id_and_history_prints_the_conversation(
    suite: RunningSuite, terminals: Terminals
) -> None:
    with Client.via_login_server(suite.http_url) as bob:
        bob.login("bob", DEMO_PASSWORD)
        for n, text in enumerate(["first", "second, with spaces", "третий"], 1):
            done = run_cli(
                suite, "send", "--user", "alice", "--password", DEMO_PASSWORD, "--to", "Bob", text
            )
            assert (done.returncode, done.stdout, done.stderr) == (0, f"{n}\n", "")
            got = bob.wait_for(msg_pb.IMMsgData, 5)
            assert (got.msg_id, bob.decode_text(got.msg_data)) == (n, text)
        bob_id = bob.user_id
    done = run_cli(
        suite,
        "history",
        "--user",
        "bob",
        "--password",
        DEMO_PASSWORD,
        "--with",
        "alice",
        "--count",
        "2",
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2
    pattern = r"#(\d) \d{4}-\d\d-\d\d \d\d:\d\d:\d\d Alice: (.*)"
    assert [re.fullmatch(pattern, line).groups() for line in lines] == [  # type: ignore[union-attr]
        ("2", "second, with spaces"),
        ("3", "третий"),
    ]
    done = run_cli(
        suite, "history", "--user", "alice", "--password", DEMO_PASSWORD, "--with", str(bob_id)
    )
    assert done.returncode == 0 and len(done.stdout.splitlines()) == 3
    assert done.stdout.splitlines()[0].endswith(" you: first")


BAD_INPUT = [
    (
        ("send", "--user", "alice", "--password", "wrong", "--to", "bob", "x"),
        "imreactor send: login refused: unknown user or wrong password",
    ),
    (
        ("send", "--user", "nobody", "--password", DEMO_PASSWORD, "--to", "bob", "x"),
        "imreactor send: login refused: unknown user or wrong password",
    ),
    (
        ("send", "--user", "alice", "--password", DEMO_PASSWORD, "--to", "zed", "x"),
        "imreactor send: no user named 'zed'",
    ),
    (
        ("send", "--user", "alice", "--password", DEMO_PASSWORD, "--group", "77", "x"),
        "imreactor send: no group 77 with you in it",
    ),
    (
        ("history", "--user", "alice", "--password", DEMO_PASSWORD, "--with", "999"),
        "imreactor history: no user with id 999",
    ),
    (
        ("history", "--user", "alice", "--with", "bob"),
        "imreactor history: no password: give --password or set IMREACTOR_PASSWORD",
    ),
]


@sqlite_only
def test_one_shot_commands_refuse_bad_input_with_one_line(
    suite: RunningSuite, terminals: Terminals
) -> None:
    for args, error in BAD_INPUT:
        done = run_cli(suite, *args)
        assert (done.returncode, done.stdout, done.stderr) == (1, "", error + "\n"), args


def test_commands_say_when_the_servers_are_down() -> None:
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    for command in (
        ("send", "--user", "alice", "--password", "pw", "--to", "bob", "x"),
        ("history", "--user", "alice", "--password", "pw", "--with", "bob"),
        ("chat", "--user", "alice", "--password", "pw"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "imreactor", *command, "--login-url", url],
            env=_env(),
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 1
        assert done.stderr == (
            f"imreactor {command[0]}: cannot reach login_server at {url}: "
            "[Errno 111] Connection refused\n"
        )


@sqlite_only
def test_send_uploads_an_image_and_the_peer_sees_its_url(
    suite: RunningSuite, terminals: Terminals, tmp_path: Path
) -> None:
    image = tmp_path / "cat.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"<html>not a png</html>")
    alice = terminals.chat("alice")
    alice.expect("Alice>")
    bob = terminals.chat("bob")
    bob.expect("Bob>")
    alice.sendline(f"/send {image}")
    alice.expect("no conversation yet")
    alice.sendline("/to bob")
    alice.expect("Alice → Bob>")
    alice.sendline("/send")
    alice.expect("usage: /send FILE")
    alice.sendline(f"/send {tmp_path / 'missing.png'}")
    alice.expect("cannot read")
    alice.sendline(f"/send {fake}")
    alice.expect("not sent: msfs refused the upload")
    alice.sendline(f"/send {image}")
    alice.expect(r"sent \[image (http://\S+)\]")
    match = alice.match
    assert isinstance(match, re.Match)
    url = match.group(1)
    assert url.startswith(suite.layout.msfs_url)
    bob.expect(r"\[image " + re.escape(url) + r"\]")
    assert download(url) == image.read_bytes()


def test_send_and_history_log_in_as_scripts_and_kick_no_open_chat(suite: RunningSuite) -> None:
    with Client.via_login_server(suite.http_url) as alice:
        alice.login("alice", DEMO_PASSWORD)  # the open chat: a desktop session
        sent = run_cli(
            suite, "send", "--user", "alice", "--password", DEMO_PASSWORD, "--to", "bob", "hi"
        )
        assert sent.returncode == 0, sent.stderr
        shown = run_cli(
            suite, "history", "--user", "alice", "--password", DEMO_PASSWORD, "--with", "bob"
        )
        assert shown.returncode == 0 and "hi" in shown.stdout, shown.stderr
        with pytest.raises(queue.Empty):  # no IMKickUser arrives
            alice.wait_for(login_pb.IMKickUser, 0.5)
        assert alice.is_connected
    assert "client type 0x41" in (suite.layout.data_dir / "msg_server.log").read_text()
