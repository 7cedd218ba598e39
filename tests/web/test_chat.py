"""The web chat in a real headless Chromium against the real suite: login_server serves the
page, the page speaks TeamTalk PDUs to msg_server over WebSocket, with browsers and SDK
clients on both ends."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
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


def new_users(suite: RunningSuite, *nicks: str) -> list[str]:
    """Fresh users (one name each, unique in the module) with these nick names."""
    n = next(_names)
    users = [(f"u{n}{nick.lower()}", nick) for nick in nicks]
    create_users(suite.layout.database_url, users, DEMO_PASSWORD)
    return [name for name, _ in users]


def open_chat(suite: RunningSuite, page: Page, user: str) -> Page:
    """Load the chat and log in as ``user``; returns once the page says it is online."""
    page.goto(suite.http_url + "/")
    page.fill("#login-user", user)
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
    expect(page.locator("#me-name")).to_have_text("Alice")
    expect(page.locator("#login")).to_be_hidden()
