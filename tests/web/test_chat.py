"""The web chat in a real headless Chromium against the real suite: login_server serves the
page, the page speaks TeamTalk PDUs to msg_server over WebSocket, with browsers and SDK
clients on both ends."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect
from servers.conftest import RunningSuite, free_ports, start_suite

from imreactor.accounts import create_users
from imreactor.client import Client
from imreactor.pdu.proto import im_base_define_pb2 as base
from imreactor.pdu.proto import im_group_pb2 as group_pb
from imreactor.pdu.proto import im_message_pb2 as msg_pb
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


def open_chat(suite: RunningSuite, page: Page, user: User) -> Page:
    """Load the chat and log in as ``user``; returns once the page says it is online."""
    page.goto(suite.http_url + "/")
    page.fill("#login-user", user.name)
    page.fill("#login-password", DEMO_PASSWORD)
    page.click("#login-button")
    expect(page.locator("#conn-status")).to_have_attribute("data-state", "online", timeout=WAIT_MS)
    return page


def sdk_login(suite: RunningSuite, name: str, **kw: Any) -> Client:
    """An SDK client over TCP (retrying while msg_server is still linking)."""
    return suite.login(name, **kw)


def user_id(client: Client) -> int:
    assert client.user_id is not None
    return client.user_id


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
    alice, bob = new_users(web_suite, "Alice", "Bob")
    sdk = sdk_login(web_suite, bob.name)
    alice_id = next(u.user_id for u in sdk.all_users().user_list if u.user_nick_name == alice.nick)
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
    sdk_login(web_suite, zed.name).send_text(alice_id, "I am new here")
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
    bob_sdk = sdk_login(web_suite, bob.name)
    carol_sdk = sdk_login(web_suite, carol.name)
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
    for member in (bob_sdk, carol_sdk):
        got = incoming(member, "welcome to the group")
        assert got.to_session_id == group_id and got.msg_type == base.MSG_TYPE_GROUP_TEXT

    carol_sdk.send_group_text(group_id, "thanks alice")
    reply = bubble(a, "thanks alice")
    expect(reply.locator(".from")).to_have_text(carol.nick, timeout=WAIT_MS)
    group_chat = a.locator("#recent-list .session", has_text="Project <x>")
    expect(group_chat.locator(".preview")).to_have_text(f"{carol.nick}: thanks alice")


def test_the_page_reconnects_and_catches_up_after_the_websocket_is_cut(
    web_suite: RunningSuite, page: Page
) -> None:
    alice, bob = new_users(web_suite, "Alice", "Bob")
    bob_sdk = sdk_login(web_suite, bob.name)
    a = open_chat(web_suite, page, alice)
    talk_to(a, bob.nick)
    alice_id = next(
        u.user_id for u in bob_sdk.all_users().user_list if u.user_nick_name == alice.nick
    )
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
    bob_again = sdk_login(web_suite, bob.name)
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
