"""The web chat in a real headless Chromium against the real suite: login_server serves the
page, the page speaks TeamTalk PDUs to msg_server over WebSocket, with browsers and SDK
clients on both ends."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect
from servers.conftest import RunningSuite, exchange, free_ports, start_suite

from imreactor.accounts import create_users
from imreactor.client import Client
from imreactor.pdu.proto import im_base_define_pb2 as base
from imreactor.pdu.proto import im_group_pb2 as group_pb
from imreactor.pdu.proto import im_message_pb2 as msg_pb
from imreactor.pdu.registry import ids_of, message_class
from imreactor.servers.suite import DEMO_PASSWORD

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[2]
WAIT_MS = 15_000
_names = itertools.count(1)


@pytest.fixture(scope="module")
def web_suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSuite]:
    """One suite for the module, its msg_server with a WebSocket port."""
    tmp = tmp_path_factory.mktemp("web")
    ws = free_ports(1)[0]
    suite = start_suite(
        tmp / "suite", f"sqlite:///{tmp / 'im.db'}", overrides={"msg": {"ws_port": ws}}
    )
    yield suite
    suite.stop()


@dataclass(frozen=True)
class User:
    name: str  # what one logs in with
    nick: str  # what the chat shows


def new_users(suite: RunningSuite, *nicks: str) -> list[User]:
    """Fresh users, unique in the module: ``Alice`` becomes login ``u3alice``, shown as
    ``Alice 3`` (the demo users' nick names are taken)."""
    n = next(_names)
    users = [User(f"u{n}{nick.lower()}", f"{nick} {n}") for nick in nicks]
    create_users(suite.layout.database_url, [(u.name, u.nick) for u in users], DEMO_PASSWORD)
    return users


#: Uncaught errors of the pages a test opened with :func:`open_chat` (none is expected).
_page_errors: list[str] = []


@pytest.fixture(autouse=True)
def no_page_errors() -> Iterator[None]:
    _page_errors.clear()
    yield
    assert _page_errors == [], "the page threw"


def open_chat(suite: RunningSuite, page: Page, user: User) -> Page:
    """Load the chat and log in as ``user``; returns once the page says it is online."""
    page.on("pageerror", lambda error: _page_errors.append(str(error)))
    # A console error is one too, except requests a test makes fail on purpose (route.abort).
    page.on(
        "console",
        lambda m: (
            _page_errors.append(m.text)
            if m.type == "error" and "net::ERR_FAILED" not in m.text
            else None
        ),
    )
    page.goto(suite.http_url + "/")
    page.fill("#login-user", user.name)
    page.fill("#login-password", DEMO_PASSWORD)
    page.click("#login-button")
    expect(page.locator("#conn-status")).to_have_attribute("data-state", "online", timeout=WAIT_MS)
    return page


def id_of(client: Client, user: User) -> int:
    """``user``'s id, as ``client`` finds it in the user list."""
    found: int = next(
        u.user_id for u in client.all_users().user_list if u.user_nick_name == user.nick
    )
    return found


def alice_and_bob(suite: RunningSuite) -> tuple[User, User, Client, int]:
    """New users Alice (for a page) and Bob (logged in with the SDK), and Alice's id."""
    alice, bob = new_users(suite, "Alice", "Bob")
    bob_sdk = suite.login(bob.name)
    return alice, bob, bob_sdk, id_of(bob_sdk, alice)


def talk_to(page: Page, nick: str) -> None:
    """Open the conversation with the contact shown as ``nick``."""
    page.click("#tab-contacts")
    page.locator("#contact-list .contact", has_text=nick).click()
    expect(page.locator("#peer-name")).to_have_text(nick)


def say(page: Page, text: str) -> None:
    page.fill("#compose-text", text)
    page.click("#send")


def bubble(page: Page, text: str) -> Any:
    return page.locator("#message-list .msg", has_text=text)


def test_a_page_logs_in_and_shows_the_chat(web_suite: RunningSuite, page: Page) -> None:
    (alice,) = new_users(web_suite, "Alice")
    # A wrong password is said on the form, which stays usable.
    page.goto(web_suite.http_url + "/")
    page.fill("#login-user", alice.name)
    page.fill("#login-password", "not the password")
    page.click("#login-button")
    expect(page.locator("#login-error")).to_have_text(
        "wrong user name or password", timeout=WAIT_MS
    )
    expect(page.locator("#chat")).to_be_hidden()
    open_chat(web_suite, page, alice)
    expect(page.locator("#me-name")).to_have_text(alice.nick)
    expect(page.locator("#login")).to_be_hidden()


@pytest.fixture
def second_page(browser: Browser) -> Iterator[Page]:
    """Another browser of its own (a context shares nothing with ``page``'s)."""
    context = browser.new_context()
    try:
        yield context.new_page()
    finally:
        context.close()


def test_two_browsers_chat_with_each_other(
    web_suite: RunningSuite, page: Page, second_page: Page
) -> None:
    alice, bob = new_users(web_suite, "Alice", "Bob")
    a = open_chat(web_suite, page, alice)
    b = open_chat(web_suite, second_page, bob)
    # Presence: each sees the other online, by name.
    a.click("#tab-contacts")
    expect(
        a.locator("#contact-list .contact", has_text=bob.nick).locator(".presence")
    ).to_have_attribute("data-presence", "online", timeout=WAIT_MS)
    talk_to(a, bob.nick)
    expect(a.locator("#peer-presence .presence")).to_have_attribute("data-presence", "online")

    # Typing shows on the other page, then the message: stored, delivered, and unread there.
    a.fill("#compose-text", "hello bo")
    expect(b.locator("#recent-list .session")).to_have_count(0)
    a.type("#compose-text", "b")
    say(a, "hello bob <b>not bold</b>")
    mine = bubble(a, "hello bob")
    expect(mine.locator(".status")).to_have_attribute("data-status", "delivered", timeout=WAIT_MS)
    chat = b.locator("#recent-list .session", has_text=alice.nick)
    expect(chat.locator(".unread")).to_have_text("1", timeout=WAIT_MS)
    expect(chat.locator(".preview")).to_have_text("hello bob <b>not bold</b>")

    # Bob opens it: the text is text (no markup), and Alice's page shows it read.
    chat.click()
    expect(bubble(b, "hello bob").locator(".text")).to_have_text("hello bob <b>not bold</b>")
    assert b.locator("#message-list b").count() == 0
    expect(chat.locator(".unread")).to_be_hidden()
    expect(mine.locator(".status")).to_have_attribute("data-status", "read", timeout=WAIT_MS)

    # Typing the other way shows Bob is typing on Alice's page; the reply arrives, read at once.
    b.type("#compose-text", "hi")
    expect(a.locator("#typing")).to_have_text(f"{bob.nick} is typing…", timeout=WAIT_MS)
    say(b, "hi alice")
    expect(bubble(a, "hi alice")).to_be_visible(timeout=WAIT_MS)
    expect(a.locator("#typing")).to_be_hidden()
    expect(bubble(b, "hi alice").locator(".status")).to_have_attribute(
        "data-status", "read", timeout=WAIT_MS
    )


def incoming(client: Client, text: str) -> Any:
    """The ``IMMsgData`` carrying ``text`` that ``client`` gets (other pushes skipped)."""
    deadline = time.monotonic() + WAIT_MS / 1000
    while time.monotonic() < deadline:
        got = client.wait_for(msg_pb.IMMsgData, deadline - time.monotonic())
        if client.decode_text(got.msg_data) == text:
            return got
    raise AssertionError(f"{text!r} never arrived")


def test_a_browser_and_an_sdk_client_chat_both_ways_with_history(
    web_suite: RunningSuite, page: Page
) -> None:
    alice, bob, sdk, alice_id = alice_and_bob(web_suite)
    for i in range(1, 31):  # more than one page of history
        sdk.send_text(alice_id, f"old message {i}")

    a = open_chat(web_suite, page, alice)
    chat = a.locator("#recent-list .session", has_text=bob.nick)
    expect(chat.locator(".unread")).to_have_text("30", timeout=WAIT_MS)
    expect(chat.locator(".preview")).to_have_text("old message 30")
    chat.click()
    expect(bubble(a, "old message 30")).to_be_visible(timeout=WAIT_MS)
    expect(a.locator("#message-list .msg")).to_have_count(20)
    # Scrolling to the top fetches the older page (IMGetMsgListReq), keeping the order.
    a.locator("#messages").evaluate("box => { box.scrollTop = 0; }")
    expect(a.locator("#message-list .msg")).to_have_count(30, timeout=WAIT_MS)
    expect(a.locator("#history-state")).to_have_attribute("data-done", "true")
    texts = a.locator("#message-list .msg .text").all_inner_texts()
    assert texts == [f"old message {i}" for i in range(1, 31)]

    # Browser -> SDK and SDK -> browser, live.
    say(a, "hello from the browser")
    expect(bubble(a, "hello from the browser").locator(".status")).to_have_attribute(
        "data-status", "stored", timeout=WAIT_MS
    )
    got = incoming(sdk, "hello from the browser")
    assert got.from_user_id == alice_id
    sdk.send_text(alice_id, "hello from the terminal")
    expect(bubble(a, "hello from the terminal")).to_be_visible(timeout=WAIT_MS)

    # Someone who joined after the page logged in is shown by name, not by id.
    (zed,) = new_users(web_suite, "Zed")
    web_suite.login(zed.name).send_text(alice_id, "I am new here")
    newcomer = a.locator("#recent-list .session", has_text="I am new here")
    expect(newcomer.locator(".name")).to_have_text(zed.nick, timeout=WAIT_MS)


def test_dates_show_on_older_messages(web_suite: RunningSuite, page: Page) -> None:
    page.goto(web_suite.http_url + "/")
    shown = page.evaluate(
        """async () => {
            const f = await import("/format.js");
            const now = new Date(2026, 5, 10, 12, 0);
            const at = (d) => Math.floor(d.getTime() / 1000);
            return {
                today: f.messageTime(at(new Date(2026, 5, 10, 9, 5)), now),
                lastYear: f.messageTime(at(new Date(2025, 2, 3, 9, 5)), now),
                heading: f.dayHeading(at(new Date(2026, 5, 9, 9, 5)), now),
            };
        }"""
    )
    assert ":" in shown["today"] and "2026" not in shown["today"]
    assert "2025" in shown["lastYear"]
    assert shown["heading"] == "Yesterday"


def test_a_browser_creates_a_group_and_chats_in_it(web_suite: RunningSuite, page: Page) -> None:
    alice, bob, carol = new_users(web_suite, "Alice", "Bob", "Carol")
    bob_sdk = web_suite.login(bob.name)
    carol_sdk = web_suite.login(carol.name)
    a = open_chat(web_suite, page, alice)

    a.click("#new-group")
    a.fill("#group-name", "Project <x>")
    for member in (bob, carol):
        a.locator("#group-members label", has_text=member.nick).locator("input").check()
    a.click("#group-create")
    expect(a.locator("#peer-name")).to_have_text("Project <x>", timeout=WAIT_MS)
    expect(a.locator("#peer-presence")).to_contain_text(carol.nick)

    notify = bob_sdk.wait_for(group_pb.IMGroupChangeMemberNotify, WAIT_MS / 1000)
    group_id = notify.group_id
    assert set(notify.cur_user_id_list) == {bob_sdk.user_id, carol_sdk.user_id, notify.user_id}

    say(a, "welcome to the group")
    expect(bubble(a, "welcome to the group").locator(".status")).to_have_attribute(
        "data-status", "stored", timeout=WAIT_MS
    )
    for client in (bob_sdk, carol_sdk):
        got = incoming(client, "welcome to the group")
        assert got.to_session_id == group_id and got.msg_type == base.MSG_TYPE_GROUP_TEXT

    carol_sdk.send_group_text(group_id, "thanks alice")
    reply = bubble(a, "thanks alice")
    expect(reply.locator(".from")).to_have_text(carol.nick, timeout=WAIT_MS)
    group_chat = a.locator("#recent-list .session", has_text="Project <x>")
    expect(group_chat.locator(".preview")).to_have_text(f"{carol.nick}: thanks alice")


def test_the_page_reconnects_and_catches_up_after_the_websocket_is_cut(
    web_suite: RunningSuite, page: Page
) -> None:
    alice, bob, bob_sdk, alice_id = alice_and_bob(web_suite)
    a = open_chat(web_suite, page, alice)
    talk_to(a, bob.nick)
    bob_sdk.send_text(alice_id, "before the cut")
    expect(bubble(a, "before the cut")).to_be_visible(timeout=WAIT_MS)

    # Hold the page offline (login_server's /msg_server refused to it) while msg_server is
    # killed and started again: its WebSocket is cut, and Bob writes meanwhile.
    a.route("**/msg_server*", lambda route: route.abort())
    web_suite.restart("msg_server", hard=True)
    expect(a.locator("#conn-status")).not_to_have_attribute("data-state", "online", timeout=WAIT_MS)
    say(a, "typed while offline")
    expect(bubble(a, "typed while offline").locator(".status")).to_have_attribute(
        "data-status", "failed", timeout=WAIT_MS
    )
    web_suite.layout.wait_until_offered([web_suite.children["msg_server"]])
    bob_again = web_suite.login(bob.name)
    for i in (1, 2, 3):
        bob_again.send_text(alice_id, f"missed {i}")

    # Let it through: the page reconnects, logs in again and fetches what it missed, once.
    a.unroute("**/msg_server*")
    expect(a.locator("#conn-status")).to_have_attribute("data-state", "online", timeout=WAIT_MS)
    for i in (1, 2, 3):
        expect(bubble(a, f"missed {i}")).to_have_count(1, timeout=WAIT_MS)
    expect(bubble(a, "before the cut")).to_have_count(1)
    # The message that was not acknowledged is sent again by a click, and arrives.
    bubble(a, "typed while offline").locator(".status").click()
    expect(bubble(a, "typed while offline").locator(".status")).not_to_have_attribute(
        "data-status", "failed", timeout=WAIT_MS
    )
    incoming(bob_again, "typed while offline")
    bob_again.send_text(alice_id, "live again")
    expect(bubble(a, "live again")).to_have_count(1, timeout=WAIT_MS)


_PIXELS_JS = """async (png) => {
    const image = new Image();
    image.src = "data:image/png;base64," + png;
    await image.decode();
    const canvas = document.createElement("canvas");
    canvas.width = image.width;
    canvas.height = image.height;
    const context = canvas.getContext("2d");
    context.drawImage(image, 0, 0);
    const data = context.getImageData(0, 0, image.width, image.height).data;
    const counts = new Map();
    for (let i = 0; i < data.length; i += 4) {
        const key = (data[i] >> 4) << 8 | (data[i + 1] >> 4) << 4 | data[i + 2] >> 4;
        counts.set(key, (counts.get(key) || 0) + 1);
    }
    const dominant = Math.max(...counts.values());
    const share = (rgb) =>
        counts.get((rgb >> 20 & 15) << 8 | (rgb >> 12 & 15) << 4 | rgb >> 4 & 15) || 0;
    return {width: image.width, height: image.height, colors: counts.size,
            dominant: dominant / (data.length / 4),
            accent: share(0x2f6fde), mine: share(0xdce8ff), theirs: share(0xffffff)};
}"""


def pixels(browser: Browser, png: bytes) -> dict[str, Any]:
    """Size, colour count, the share of the commonest colour, and the pixels of the chat's
    accent and bubble colours in a screenshot, decoded in a blank page of its own."""
    context = browser.new_context()
    try:
        blank = context.new_page()
        result: dict[str, Any] = blank.evaluate(_PIXELS_JS, base64.b64encode(png).decode())
        return result
    finally:
        context.close()


def test_the_screenshot_is_the_chat_on_a_phone_sized_screen(
    web_suite: RunningSuite, browser: Browser
) -> None:
    alice, bob, bob_sdk, alice_id = alice_and_bob(web_suite)
    bob_sdk.send_text(alice_id, "how does it look on a phone?")
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    try:
        phone = open_chat(web_suite, context.new_page(), alice)
        # One pane at a time: the chats, then the conversation with a way back.
        expect(phone.locator("#conversation")).to_be_hidden()
        phone.locator("#recent-list .session", has_text=bob.nick).click()
        expect(phone.locator("#sidebar")).to_be_hidden()
        expect(bubble(phone, "how does it look on a phone?")).to_be_visible(timeout=WAIT_MS)
        say(phone, "fine")
        expect(bubble(phone, "fine").locator(".status")).to_have_attribute(
            "data-status", "stored", timeout=WAIT_MS
        )
        for part in ("#peer-name", "#messages", "#composer", "#back"):
            expect(phone.locator(part)).to_be_visible()
        box = phone.locator("#composer").bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390
        assert phone.title() == "imreactor chat"
        shot = pixels(browser, phone.screenshot())
        assert (shot["width"], shot["height"]) == (390, 844)
        # Not blank, not an error text: text, the page's background and bars, and the
        # chat's own colours (the send button, Alice's bubble, Bob's bubble) in area.
        assert shot["colors"] >= 8 and shot["dominant"] < 0.99, shot
        assert min(shot["accent"], shot["mine"], shot["theirs"]) > 500, shot
        phone.click("#back")
        expect(phone.locator("#sidebar")).to_be_visible()
    finally:
        context.close()


def test_the_page_schema_is_the_registry(web_suite: RunningSuite) -> None:
    with urllib.request.urlopen(web_suite.http_url + "/proto/im.json", timeout=10) as rsp:
        assert rsp.headers["Content-Type"].startswith("application/json")
        schema = json.loads(rsp.read())
    commands: dict[str, int] = {}

    def walk(node: dict[str, Any], path: str) -> None:
        for name, child in node.get("nested", {}).items():
            command = child.get("options", {}).get("(IM.BaseDefine.command_id)")
            if command is not None:
                commands[f"{path}{name}"] = command
            walk(child, f"{path}{name}.")

    walk(schema, "")
    assert commands, "no PDU in the schema"
    for full_name, command in commands.items():
        # The page puts the command's high byte in the header as the service id.
        cls = message_class(command >> 8, command)
        assert cls is not None and cls.DESCRIPTOR.full_name == full_name
        assert ids_of(cls) == (command >> 8, command)


def test_the_page_md5_is_the_protocol_digest(web_suite: RunningSuite, page: Page) -> None:
    page.goto(web_suite.http_url + "/")
    words = ["", "imreactor", "x" * 55, "y" * 56, "z" * 64, "密码 ü €", "q" * 1000]
    digests = page.evaluate(
        "async (words) => { const m = await import('/md5.js'); return words.map(m.md5Hex); }",
        words,
    )
    assert digests == [hashlib.md5(w.encode()).hexdigest() for w in words]


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", b"405"),
        (b"GET /vendor/ HTTP/1.1\r\nHost: x\r\n\r\n", b"404"),
        (b"GET /proto/ HTTP/1.1\r\nHost: x\r\n\r\n", b"404"),
        (b"GET /../pyproject.toml HTTP/1.1\r\nHost: x\r\n\r\n", b"404"),
        (b"GET /%2e%2e/static.py HTTP/1.1\r\nHost: x\r\n\r\n", b"404"),
        (b"GET /vendor/VERSIONS.json/.. HTTP/1.1\r\nHost: x\r\n\r\n", b"404"),
        (b"GET /app.js\x00 HTTP/1.1\r\nHost: x\r\n\r\n", b"400"),
        (b"BREW / HTCPCP/1.0\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 70_000 + b"\r\n\r\n", b"400"),
    ],
    ids=[
        "post",
        "vendor-dir",
        "proto-dir",
        "dotdot",
        "encoded-dotdot",
        "trailing",
        "nul",
        "method",
        "huge",
    ],
)
def test_malformed_requests_to_the_web_routes_get_an_error_and_the_page_stays(
    web_suite: RunningSuite, raw: bytes, status: bytes
) -> None:
    port = web_suite.layout.http_port
    answer = exchange(port, raw.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1))
    assert answer.split(b" ", 2)[1] == status, answer[:200]
    page = exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = page.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"script-src 'self'" in head
    assert b'<main id="chat"' in body
