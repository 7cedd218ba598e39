"""parse_address: the one parser of "host:port" strings in configs and command lines."""

from __future__ import annotations

import pytest

from imreactor.net import parse_address
from imreactor.net.connection import is_port


@pytest.mark.parametrize(
    "text,expected",
    [
        ("127.0.0.1:8000", ("127.0.0.1", 8000)),
        (" db.local ", ("db.local", 10600)),
        ("[::1]:8100", ("::1", 8100)),
        ("[::1]", ("::1", 10600)),
        ("::1", ("::1", 10600)),
    ],
)
def test_forms(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text, 10600) == expected


@pytest.mark.parametrize("text", ["127.0.0.1:x", "h:70000", "[::1]:-1"])
def test_bad_ports_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text, 1)


@pytest.mark.parametrize(
    ("port", "allow_zero", "ok"),
    [
        (0, True, True),
        (0, False, False),
        (1, False, True),
        (65535, False, True),
        (65536, True, False),
        (-1, True, False),
        (True, True, False),
        ("80", True, False),
        (80.0, True, False),
    ],
)
def test_is_port(port: object, allow_zero: bool, ok: bool) -> None:
    assert is_port(port, allow_zero=allow_zero) is ok
