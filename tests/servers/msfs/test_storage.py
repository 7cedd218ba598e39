"""FileStorage: keys name files under its root, puts are whole, other keys are refused."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from imreactor.servers.msfs.storage import FileStorage


def key_of(data: bytes, file_type: str = "png") -> str:
    h = hashlib.sha256(data).hexdigest()
    return f"g0/{h[:2]}/{h[2:4]}/{h}.{file_type}"


def test_put_size_read(tmp_path: Path) -> None:
    store = FileStorage(tmp_path / "s")
    key = key_of(b"hello world")
    assert store.size(key) is None
    store.put(key, b"hello world")
    store.put(key, b"hello world")  # again: harmless
    assert store.size(key) == 11
    assert store.read(key, 6, 5) == b"world"
    assert (tmp_path / "s" / key).read_bytes() == b"hello world"
    assert [p.name for p in (tmp_path / "s" / key).parent.iterdir()] == [key.rsplit("/")[-1]]


@pytest.mark.parametrize(
    "key",
    [
        "../x.png",
        "g0/00/00/" + "0" * 64 + ".png/../../../x",
        "/etc/passwd",
        "g0/ab/cd/" + "ab" * 32 + ".png",  # the directories do not match the hash
        "g0/00/00/" + "0" * 64 + ".PNG",
    ],
)
def test_keys_that_are_not_store_names_are_refused(tmp_path: Path, key: str) -> None:
    store = FileStorage(tmp_path)
    with pytest.raises(ValueError):
        store.put(key, b"x")
    with pytest.raises(ValueError):
        store.size(key)


def test_reading_a_missing_key_is_a_key_error(tmp_path: Path) -> None:
    with pytest.raises(KeyError):
        FileStorage(tmp_path).read(key_of(b"never"), 0, 1)
