"""Sessions per device class: TeamTalk's one desktop and one mobile by default, and our web
and script classes beside them, each with its own configurable number of sessions."""

from __future__ import annotations

import time
from typing import Any

import pytest

from imreactor.client import Client
from imreactor.config import ConfigError, from_mapping
from imreactor.pdu.kinds import device_class
from imreactor.pdu.proto import im_base_define_pb2 as base
from imreactor.pdu.proto import im_login_pb2 as login_pb
from imreactor.pdu.proto import im_message_pb2 as msg_pb
from imreactor.servers.msg.config import MsgConfig

from .conftest import RunningSuite, SuiteFactory

pytestmark = pytest.mark.timeout(120)
# Device classes are msg_server's: the storage backend plays no part.
sqlite_only = pytest.mark.parametrize("database", ["sqlite"], indirect=True)

WINDOWS, MAC = base.CLIENT_TYPE_WINDOWS, base.CLIENT_TYPE_MAC
IOS, WEB, SCRIPT = base.CLIENT_TYPE_IOS, base.CLIENT_TYPE_WEB, base.CLIENT_TYPE_SCRIPT


def test_device_classes_of_client_types() -> None:
    assert [device_class(t) for t in (WINDOWS, MAC, IOS, base.CLIENT_TYPE_ANDROID)] == [
        "desktop",
        "desktop",
        "mobile",
        "mobile",
    ]
    assert (device_class(WEB), device_class(SCRIPT)) == ("web", "script")
    assert device_class(0x07) == "desktop"  # an unknown TeamTalk type below 0x10


def _kicked(client: Client, timeout_s: float = 5.0) -> bool:
    try:
        kick = client.wait_for(login_pb.IMKickUser, timeout_s)
    except Exception:
        return False
    return kick.kick_reason == base.KICK_REASON_DUPLICATE_USER


def _still_served(suite: RunningSuite, client: Client) -> None:
    """``client`` gets a message from dave: its session is alive."""
    dave = suite.login("dave")
    dave.send_message(client.user_id, b"still there?")
    assert client.wait_for(msg_pb.IMMsgData, 5).msg_data == b"still there?"
    assert client.is_connected


@sqlite_only
def test_teamtalk_types_keep_one_desktop_and_one_mobile(suite: RunningSuite) -> None:
    first = suite.login("alice", client_type=WINDOWS)
    phone = suite.login("alice", client_type=IOS)
    second = suite.login("alice", client_type=MAC)  # another desktop
    assert _kicked(first)
    assert not _kicked(phone, 0.5) and second.is_connected
    _still_served(suite, phone)


@sqlite_only
def test_web_and_script_sessions_kick_no_desktop(suite: RunningSuite) -> None:
    desktop = suite.login("alice", client_type=WINDOWS)
    tabs = [suite.login("alice", client_type=WEB) for _ in range(2)]
    scripts = [suite.login("alice", client_type=SCRIPT) for _ in range(2)]
    for client in [desktop, *tabs]:
        assert not _kicked(client, 0.3)
    _still_served(suite, desktop)
    for client in [*tabs, *scripts]:
        assert client.is_connected


@sqlite_only
def test_the_oldest_session_of_a_class_makes_room(make_suite: SuiteFactory) -> None:
    suite = make_suite({"msg": {"sessions_web": 2, "sessions_desktop": 2}})
    web = [suite.login("alice", client_type=WEB) for _ in range(3)]
    assert _kicked(web[0])
    assert not _kicked(web[1], 0.3)
    desktops = [suite.login("bob", client_type=t) for t in (WINDOWS, MAC)]
    time.sleep(0.3)  # a kick, if any, has had time to arrive
    assert all(c.is_connected for c in desktops) and web[1].is_connected and web[2].is_connected


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ({"sessions_web": 0}, "sessions_web"),
        ({"sessions_desktop": -1}, "sessions_desktop"),
        ({"sessions_script": "many"}, "sessions_script"),
    ],
)
def test_malformed_session_limits_are_refused(values: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        from_mapping(MsgConfig, values, "msg")
