"""Upload to and download from msfs, the store behind login_server's ``msfsPrior``.

Blocking HTTP in the calling thread (as :mod:`.locate` asks login_server), with
the request built as the original clients build it: one ``multipart/form-data``
part named ``file0`` with the file name, and the JSON answer of docs/servers.md
(msfs) read back. A file name is sent for its type (the extension); msfs names
the file by its content.
"""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.request
from pathlib import Path

#: The largest download :func:`download` accepts by default (the msfs upload limit).
MAX_DOWNLOAD_BYTES = 10 * 1024 * 1024


class MsfsError(Exception):
    """An upload msfs refused (``code`` is its error_code) or could not be reached (None)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


def form_body(filename: str, data: bytes) -> tuple[str, bytes]:
    """``(content_type, body)`` of an upload of ``data`` named ``filename``."""
    boundary = "imreactor-" + secrets.token_hex(12)
    safe_name = filename.replace('"', "_").replace("\r", "_").replace("\n", "_")
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="file0"; filename="{safe_name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return f"multipart/form-data; boundary={boundary}", head + data + (
        f"\r\n--{boundary}--\r\n".encode()
    )


def upload(msfs_url: str, data: bytes, filename: str, timeout_s: float = 30.0) -> str:
    """POST ``data`` to ``msfs_url``; the URL msfs gives for it. :class:`MsfsError` if refused."""
    content_type, body = form_body(filename, data)
    request = urllib.request.Request(msfs_url, body, {"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as rsp:
            raw = rsp.read(64 * 1024)
    except (urllib.error.URLError, OSError) as exc:
        raise MsfsError(f"cannot upload to {msfs_url}: {exc}") from exc
    try:
        answer = json.loads(raw)
        code, url = int(answer["error_code"]), answer.get("url", "")
    except (ValueError, KeyError, TypeError):
        raise MsfsError(f"{msfs_url} did not answer like msfs: {raw[:100]!r}") from None
    if code != 0 or not isinstance(url, str) or not url:
        raise MsfsError(f"msfs refused the upload: {answer.get('error_msg', '')}", code)
    return url


def upload_file(msfs_url: str, path: str | Path, timeout_s: float = 30.0) -> str:
    """:func:`upload` of the file at ``path``, named by its base name."""
    p = Path(path)
    return upload(msfs_url, p.read_bytes(), p.name, timeout_s)


def download(url: str, timeout_s: float = 30.0, max_bytes: int = MAX_DOWNLOAD_BYTES) -> bytes:
    """GET ``url`` (an ``http(s)`` msfs URL); :class:`MsfsError` if it fails or is too large."""
    if not url.startswith(("http://", "https://")):
        raise MsfsError(f"not an http(s) URL: {url[:100]!r}")
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as rsp:
            data: bytes = rsp.read(max_bytes + 1)
    except (urllib.error.URLError, OSError) as exc:
        raise MsfsError(f"cannot download {url}: {exc}") from exc
    if len(data) > max_bytes:
        raise MsfsError(f"{url} is over {max_bytes} bytes")
    return data
