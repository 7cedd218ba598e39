"""The upload body msfs accepts: ``multipart/form-data`` with one file part (RFC 7578).

:func:`parse_upload` finds the first part that names a file and returns its
bytes and what msfs keeps of its file name (the type, and the ``_WxH`` size
hint TeamTalk clients put before it); anything else is an :class:`UploadError`
carrying the original msfs's error code for that fault. Other parts (the Mac
client sends ``type=im_image``) are skipped. Sans-IO: it works on the whole
body, which the HTTP layer has already limited in size.
"""

from __future__ import annotations

import email.message
import re
from dataclasses import dataclass

#: error_code values of the original msfs, with what each means here.
OK = 0
TOO_LARGE = 1  # the body, or the file in it, is over the size limit
NO_DISPOSITION = 2  # no part has a Content-Disposition header
NO_FILENAME = 3  # no part names a file (filename=)
NO_BOUNDARY = 4  # Content-Type is not multipart/form-data with a boundary
BOUNDARY_MISSING = 5  # the body does not start with the boundary
PART_HEAD_UNTERMINATED = 7  # a part's headers do not end with an empty line
NO_CLOSING_BOUNDARY = 8  # a part is not followed by a boundary
TYPE_TOO_LONG = 9  # the file name's type (after the last dot) is over 15 characters
NO_TYPE = 10  # the file name has no dot, so no type
NAME_TOO_LONG = 11  # the file name is over 255 bytes
# Ours, after the original's codes:
TYPE_REFUSED = 12  # the type is not allowed, or the bytes are not an image of that type
STORE_FAILED = 13  # the server could not store the file (HTTP 500)

MAX_NAME_BYTES = 255
MAX_TYPE_CHARS = 15
#: At most this many parts are looked at: a body of empty parts is not worth parsing.
MAX_PARTS = 16

_SIZE_HINT = re.compile(r"_(\d{1,4})x(\d{1,4})\.[^.]*\Z")


class UploadError(ValueError):
    """A body msfs cannot take; ``code`` is the error_code to answer with."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


@dataclass(frozen=True)
class Upload:
    """The file part: its bytes, its type (lowercased), and ``_WxH`` or ``""``."""

    data: bytes
    file_type: str
    size_hint: str


def boundary_of(content_type: str) -> bytes:
    """The boundary of a ``multipart/form-data`` Content-Type; UploadError otherwise."""
    header = email.message.Message()
    header["content-type"] = content_type
    boundary = header.get_param("boundary")
    if header.get_content_type() != "multipart/form-data" or not isinstance(boundary, str):
        raise UploadError(NO_BOUNDARY, f"not multipart/form-data with a boundary: {content_type!r}")
    if not 1 <= len(boundary) <= 70 or not boundary.isascii():
        raise UploadError(NO_BOUNDARY, "a boundary is 1..70 ASCII characters (RFC 2046)")
    return boundary.encode("ascii")


def parse_upload(content_type: str, body: bytes) -> Upload:
    """The first file part of ``body``; :class:`UploadError` if there is none or it is malformed."""
    delimiter = b"--" + boundary_of(content_type)
    if body.startswith(delimiter):
        pos = len(delimiter)
    else:
        at = body.find(b"\r\n" + delimiter)  # a preamble before the first boundary
        if at < 0:
            raise UploadError(BOUNDARY_MISSING, "the body does not hold the boundary")
        pos = at + 2 + len(delimiter)
    saw_disposition = False
    for _ in range(MAX_PARTS):
        if body.startswith(b"--", pos):
            break  # the closing delimiter
        line_end = body.find(b"\r\n", pos)
        if line_end < 0 or body[pos:line_end].strip(b" \t"):
            raise UploadError(NO_CLOSING_BOUNDARY, "a boundary line does not end with CRLF")
        start = line_end + 2
        if body.startswith(b"\r\n", start):
            head, data_start = b"", start + 2  # a part without headers
        else:
            head_end = body.find(b"\r\n\r\n", start)
            if head_end < 0:
                raise UploadError(PART_HEAD_UNTERMINATED, "a part's headers do not end")
            head, data_start = body[start:head_end], head_end + 4
        data_end = body.find(b"\r\n" + delimiter, data_start)
        if data_end < 0:
            raise UploadError(NO_CLOSING_BOUNDARY, "a part is not followed by a boundary")
        disposition = _header(head, "content-disposition")
        if disposition is not None:
            saw_disposition = True
            name = _filename(disposition)
            if name is not None:
                return _upload(name, body[data_start:data_end])
        pos = data_end + 2 + len(delimiter)
    if saw_disposition:
        raise UploadError(NO_FILENAME, "no part names a file")
    raise UploadError(NO_DISPOSITION, "no part has a Content-Disposition")


def _header(head: bytes, name: str) -> str | None:
    for line in head.split(b"\r\n"):
        key, sep, value = line.partition(b":")
        if sep and key.strip().lower() == name.encode():
            return value.strip().decode("utf-8", "replace")
    return None


def _filename(disposition: str) -> str | None:
    header = email.message.Message()
    header["content-disposition"] = disposition
    name = header.get_filename()
    return name if isinstance(name, str) else None


def _upload(filename: str, data: bytes) -> Upload:
    # Only the last path segment counts, and of it only the type and the size hint:
    # whatever the name holds ("../../x", NUL, a drive letter) never reaches a path.
    name = re.split(r"[/\\]", filename)[-1]
    if len(name.encode("utf-8", "replace")) > MAX_NAME_BYTES:
        raise UploadError(NAME_TOO_LONG, "file name over 255 bytes")
    _, dot, file_type = name.rpartition(".")
    if not dot:
        raise UploadError(NO_TYPE, f"file name {name[:50]!r} has no type")
    if len(file_type) > MAX_TYPE_CHARS:
        raise UploadError(TYPE_TOO_LONG, "file type over 15 characters")
    hint = _SIZE_HINT.search(name)
    size_hint = f"_{int(hint[1])}x{int(hint[2])}" if hint else ""
    return Upload(data, file_type.lower(), size_hint)
