"""The web chat in a real headless Chromium against the real suite: login_server serves the
page, the page speaks TeamTalk PDUs to msg_server over WebSocket, with browsers and SDK
clients on both ends."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect
from servers.conftest import RunningSuite, free_ports, start_suite

from imreactor.accounts import create_users
from imreactor.client import Client
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
    expect(a.locator("#contact-list .contact", has_text=bob.nick).locator(".presence")).to_have_attribute(
        "data-presence", "online", timeout=WAIT_MS
    )
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
