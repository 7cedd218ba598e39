"""Where msfs keeps its files: a small blocking interface, and the filesystem behind it.

A key is a name msfs made from the content (``g0/ab/cd/<sha256>[_WxH].<type>``,
checked against :data:`KEY_RE` before it reaches a backend); a client's file
name never becomes part of one. Backends are called on worker threads only,
never on the loop thread, so they may block (a disk, or an object store's HTTP
client); they must be safe to call from several threads at once.

An object store fits the same three calls: ``put`` an object under the key
(PUT, where the key's content hash makes a repeated put harmless), ``size`` it
(HEAD), ``read`` a byte range (GET with Range).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Protocol

#: A stored file's key: group, two directory levels from the hash, hash, size hint, type.
KEY_RE = re.compile(
    r"g0/([0-9a-f]{2})/([0-9a-f]{2})/\1\2[0-9a-f]{60}(_\d{1,4}x\d{1,4})?\.[a-z0-9]{1,15}"
)


class Storage(Protocol):
    """A backend. Blocking; thread-safe; keys always match :data:`KEY_RE`."""

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``, durably once this returns. A key already stored
        holds the same bytes (keys name their content), so putting it again may do nothing."""
        ...

    def size(self, key: str) -> int | None:
        """The stored file's length in bytes, or None if there is no such key."""
        ...

    def read(self, key: str, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset`` (both within :meth:`size`); KeyError if absent."""
        ...


class FileStorage:
    """Files in a directory tree under ``root``: the key is the relative path.

    A put writes a temporary file in the target directory, fsyncs it, renames it
    into place and fsyncs the directory: a file is either absent or complete,
    also after a crash, and an answer is given only once it is on disk.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        if not KEY_RE.fullmatch(key):  # the server checks too; a backend trusts no caller
            raise ValueError(f"not a store key: {key[:100]!r}")
        return self.root / key

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        if path.is_file() and path.stat().st_size == len(data):
            return  # the same name is the same content: stored already
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def size(self, key: str) -> int | None:
        try:
            st = self._path(key).stat()
        except FileNotFoundError:
            return None
        return st.st_size

    def read(self, key: str, offset: int, length: int) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                f.seek(offset)
                return f.read(length)
        except FileNotFoundError:
            raise KeyError(key) from None
