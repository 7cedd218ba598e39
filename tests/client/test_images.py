"""Images the TeamTalk way: markers in message text, and an image sent through the suite.

The text side is pure (:mod:`imreactor.client.images`); the rest runs against a
real suite: alice asks login_server (which hands out msfs's URL), uploads a PNG
to msfs and sends the image message; bob receives it, finds the URL and
downloads the same bytes.
"""

from __future__ import annotations

import pytest
from servers.conftest import RunningSuite

from imreactor.client import Client
from imreactor.client.images import IMAGE_END, IMAGE_START, Image, image_text, images, segments
from imreactor.client.msfs import MsfsError, download, form_body, upload
from imreactor.pdu.proto import im_message_pb2 as msg_pb
from imreactor.servers.msfs.multipart import parse_upload
from imreactor.servers.suite import DEMO_PASSWORD

URL = "http://127.0.0.1:8700/g0/ab/cd/" + "ab" * 32 + ".png"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8


def test_an_image_message_is_the_url_between_the_markers() -> None:
    text = image_text(URL)
    assert text == "&$#@~^@[{:" + URL + ":}]&$~@#@"
    assert segments(text) == [Image(URL)]
    assert images(text) == [URL]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain", ["plain"]),
        ("", []),
        (
            f"hi {IMAGE_START}u1{IMAGE_END} and {IMAGE_START}u2{IMAGE_END}",
            ["hi ", Image("u1"), " and ", Image("u2")],
        ),
        (f"{IMAGE_START}no end", [f"{IMAGE_START}no end"]),
        (f"{IMAGE_END}{IMAGE_START}u{IMAGE_END}!", [IMAGE_END, Image("u"), "!"]),
        (f"{IMAGE_START}{IMAGE_END}", [Image("")]),
    ],
    ids=["text", "empty", "mixed", "unclosed", "end-before-start", "empty-url"],
)
def test_mixed_and_broken_texts(text: str, expected: list[object]) -> None:
    assert segments(text) == expected


def test_a_url_holding_the_closing_marker_is_refused() -> None:
    with pytest.raises(ValueError):
        image_text("http://x/" + IMAGE_END)


@pytest.mark.parametrize("name", ['a".png', "line\r\nbreak.png", "ünï.png"])
def test_the_sdk_form_is_one_msfs_reads(name: str) -> None:
    content_type, body = form_body(name, PNG)
    upload_ = parse_upload(content_type, body)
    assert (upload_.data, upload_.file_type) == (PNG, "png")


def test_an_unreachable_or_refusing_msfs_is_an_msfs_error(suite: RunningSuite) -> None:
    with pytest.raises(MsfsError) as refused:
        upload(suite.layout.msfs_url, b"not an image", "x.png")
    assert refused.value.code == 12
    with pytest.raises(MsfsError):
        upload(suite.http_url + "/nothing", PNG, "x.png")  # login_server: 404, no JSON
    with pytest.raises(MsfsError):
        download("file:///etc/passwd")


def test_an_image_goes_from_alice_to_bob_byte_for_byte(suite: RunningSuite) -> None:
    alice = Client.via_login_server(suite.http_url)
    bob = Client.via_login_server(suite.http_url)
    try:
        assert alice.msfs_url == suite.layout.msfs_url  # from login_server's msfsPrior
        alice.login("alice", DEMO_PASSWORD)
        bob.login("bob", DEMO_PASSWORD)
        ack = alice.send_image(bob.user_id, PNG, "photo.png")
        got = bob.wait_for(msg_pb.IMMsgData, 10)
        assert got.msg_id == ack.msg_id
        (url,) = images(bob.decode_text(got.msg_data))
        assert url.startswith(suite.layout.msfs_url + "g0/")
        assert download(url) == PNG
    finally:
        alice.close()
        bob.close()
