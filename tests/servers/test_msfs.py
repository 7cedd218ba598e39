"""msfs as clients use it: a real ``imreactor msfs`` process, spoken to over loopback.

Uploads are built the way the original clients build them (Android's
hand-written multipart, iOS's ``image.png_WxH.png`` names, the Mac's extra
``type=im_image`` field); answers are checked for the original's JSON shape and
error codes. Downloads: whole files, byte ranges, HEAD, unknown paths. Bad input:
an oversized Content-Length refused before the body is sent, a chunked body that
grows past the limit, malformed multipart, path traversal in the file name,
refused types and content that lies about its type, a body that is not
multipart at all.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from imreactor.config import dump
from imreactor.servers.suite import Child, start_child, stop_children

from .conftest import free_ports

MAX_FILE_BYTES = 64 * 1024
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
GIF = b"GIF89a" + b"\x01\x02" * 500
BOUNDARY = "---------7d4a6d158c9"  # the Android client's


@dataclass
class Got:
    status: int
    body: bytes
    response: http.client.HTTPResponse

    def getheader(self, name: str) -> str | None:
        return self.response.getheader(name)


class Msfs:
    def __init__(self, child: Child, port: int, data_dir: Path) -> None:
        self.child = child
        self.port = port
        self.data_dir = data_dir

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)

    def post(
        self, body: bytes, content_type: str = f"multipart/form-data; boundary={BOUNDARY}"
    ) -> tuple[int, str, dict[str, Any]]:
        c = self.connection()
        c.request("POST", "/", body, {"Content-Type": content_type})
        rsp = c.getresponse()
        data = rsp.read()
        c.close()
        return rsp.status, rsp.getheader("Content-Type", ""), json.loads(data)

    def upload(self, data: bytes, filename: str) -> dict[str, Any]:
        status, ctype, answer = self.post(form(data, filename))
        assert status == 200
        assert ctype == "text/html; charset=utf-8"
        return answer

    def get(self, path: str, headers: dict[str, str] | None = None, method: str = "GET") -> Got:
        c = self.connection()
        c.request(method, path, headers=headers or {})
        rsp = c.getresponse()
        got = Got(rsp.status, rsp.read(), rsp)
        c.close()
        return got

    def raw(self, data: bytes) -> bytes:
        """Send ``data`` on a fresh connection; everything the server answers until it closes."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(data)
            out = b""
            while chunk := s.recv(65536):
                out += chunk
        return out


def form(data: bytes, filename: str, *, extra: bool = False) -> bytes:
    """A multipart body as the Android client writes it (plus the Mac's ``type`` field)."""
    out = b""
    if extra:
        out += (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="type"\r\n\r\nim_image\r\n'
        ).encode()
    out += (
        f"--{BOUNDARY}\r\n"
        f'Content-Disposition: form-data;name="file0";filename="{filename}"\r\n'
        "Content-Type:application/octet-stream\r\n\r\n"
    ).encode()
    return out + data + f"\r\n--{BOUNDARY}--\r\n".encode()


@pytest.fixture
def msfs(tmp_path: Path) -> Iterator[Msfs]:
    (port,) = free_ports(1)
    config = tmp_path / "msfs.toml"
    table = {"port": port, "max_file_bytes": MAX_FILE_BYTES, "store_dir": "store"}
    config.write_text(dump({"msfs": table}))
    child = start_child("msfs", "msfs", config, tmp_path)
    yield Msfs(child, port, tmp_path)
    stop_children([child])


def test_an_image_goes_up_and_comes_back_byte_for_byte(msfs: Msfs) -> None:
    answer = msfs.upload(PNG, "photo.png")
    digest = hashlib.sha256(PNG).hexdigest()
    path = f"g0/{digest[:2]}/{digest[2:4]}/{digest}.png"
    assert answer == {
        "error_code": 0,
        "error_msg": "成功",
        "path": path,
        "url": f"http://127.0.0.1:{msfs.port}/{path}",
    }
    rsp = msfs.get("/" + path)
    assert rsp.status == 200
    assert rsp.body == PNG
    assert rsp.getheader("Content-Type") == "image/png"
    assert rsp.getheader("Accept-Ranges") == "bytes"
    assert rsp.getheader("X-Content-Type-Options") == "nosniff"
    assert (msfs.data_dir / "store" / path).read_bytes() == PNG  # on disk under store_dir
    head = msfs.get("/" + path, method="HEAD")
    assert (head.status, head.body, head.getheader("Content-Length")) == (200, b"", str(len(PNG)))


def test_the_same_bytes_get_the_same_name_and_the_size_hint_is_kept(msfs: Msfs) -> None:
    first = msfs.upload(GIF, "a.gif")
    again = msfs.upload(
        GIF,
        "other name.GIF",
    )
    assert first["path"] == again["path"]
    hinted = msfs.upload(GIF, "image.gif_120x80.gif")  # the iOS client's naming
    assert hinted["path"].endswith("_120x80.gif")
    assert msfs.get("/" + hinted["path"]).body == GIF
    status, _, with_field = msfs.post(form(PNG, "x.png", extra=True))  # the Mac's extra field
    assert (status, with_field["error_code"]) == (200, 0)


@pytest.mark.parametrize(
    ("spec", "status", "span"),
    [
        ("bytes=0-9", 206, (0, 9)),
        ("bytes=100-", 206, (100, len(PNG) - 1)),
        ("bytes=-16", 206, (len(PNG) - 16, len(PNG) - 1)),
        ("bytes=10-999999", 206, (10, len(PNG) - 1)),
        ("bytes=5-2", 200, None),  # invalid: ignored
        ("bytes=0-1,4-5", 200, None),  # several ranges: the whole file
        ("items=0-1", 200, None),
    ],
)
def test_byte_ranges(msfs: Msfs, spec: str, status: int, span: tuple[int, int] | None) -> None:
    path = "/" + msfs.upload(PNG, "r.png")["path"]
    rsp = msfs.get(path, {"Range": spec})
    assert rsp.status == status
    if span is None:
        assert rsp.body == PNG
        assert rsp.getheader("Content-Range") is None
    else:
        first, last = span
        assert rsp.body == PNG[first : last + 1]
        assert rsp.getheader("Content-Range") == f"bytes {first}-{last}/{len(PNG)}"


def test_a_range_past_the_end_is_416(msfs: Msfs) -> None:
    path = "/" + msfs.upload(PNG, "r.png")["path"]
    rsp = msfs.get(path, {"Range": f"bytes={len(PNG)}-"})
    assert rsp.status == 416
    assert rsp.getheader("Content-Range") == f"bytes */{len(PNG)}"


@pytest.mark.parametrize(
    "path",
    [
        "/g0/00/00/" + "0" * 64 + ".png",  # well formed, never stored
        "/",
        "/g0/../../etc/passwd",
        "/g0/%2e%2e/%2e%2e/msfs.toml",
        "/msfs.toml",
        "/store/g0",
        "/g0/000/000/1410706133246550_140184328214.jpg",  # an original msfs name
    ],
)
def test_unknown_paths_are_404(msfs: Msfs, path: str) -> None:
    assert msfs.get(path).status == 404


def test_an_oversized_upload_is_refused_from_its_content_length(msfs: Msfs) -> None:
    # Only the head is sent: the answer comes without the body, which is never read.
    head = (
        "POST / HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {100 * MAX_FILE_BYTES}\r\n\r\n"
    ).encode()
    out = msfs.raw(head)
    status, _, body = out.partition(b"\r\n")[0], None, out.partition(b"\r\n\r\n")[2]
    assert status == b"HTTP/1.1 200 OK"
    assert json.loads(body)["error_code"] == 1
    assert b"Connection: close" in out


def test_a_chunked_upload_is_refused_once_it_passes_the_limit(msfs: Msfs) -> None:
    chunk = b"x" * 8192
    head = (
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n"
    ).encode()
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(20))
    out = msfs.raw(head + body)
    assert json.loads(out.partition(b"\r\n\r\n")[2])["error_code"] == 1


def test_a_file_just_over_the_limit_is_refused_inside_the_form(msfs: Msfs) -> None:
    big = b"\x89PNG\r\n\x1a\n" + b"\0" * MAX_FILE_BYTES  # fits the body limit, not the file one
    assert msfs.upload(big, "big.png")["error_code"] == 1
    assert msfs.upload(big[:MAX_FILE_BYTES], "ok.png")["error_code"] == 0


MALFORMED = {
    "not-multipart": ("application/x-www-form-urlencoded", b"a=b", 4),
    "no-boundary-param": ("multipart/form-data", form(PNG, "a.png"), 4),
    "boundary-absent": (None, b"just bytes", 5),
    "unterminated-head": (None, f"--{BOUNDARY}\r\nContent-Disposition: x".encode(), 7),
    "no-closing-boundary": (None, form(PNG, "a.png")[:-30], 8),
    "no-disposition": (None, f"--{BOUNDARY}\r\nX: y\r\n\r\nabc\r\n--{BOUNDARY}--".encode(), 2),
    "no-filename": (
        None,
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="f"\r\n\r\nabc\r\n--{BOUNDARY}--'
        ).encode(),
        3,
    ),
    "no-type": (None, form(PNG, "noextension"), 10),
    "long-type": (None, form(PNG, "a." + "p" * 16), 9),
    "long-name": (None, form(PNG, "n" * 300 + ".png"), 11),
    "type-not-allowed": (None, form(b"<html><script>", "page.html"), 12),
    "html-as-png": (None, form(b"<html><script>alert(1)</script>", "evil.png"), 12),
    "empty-body": (None, b"", 5),
}


@pytest.mark.parametrize("ctype,body,code", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_uploads_get_an_error_code_not_a_traceback(
    msfs: Msfs, ctype: str | None, body: bytes, code: int
) -> None:
    status, answer_type, answer = (
        msfs.post(body) if ctype is None else msfs.post(body, content_type=ctype)
    )
    assert (status, answer_type) == (200, "text/html; charset=utf-8")
    assert answer["error_code"] == code
    assert answer["path"] == answer["url"] == ""
    assert answer["error_msg"]
    assert msfs.upload(PNG, "after.png")["error_code"] == 0  # the server is fine
    assert "Traceback" not in (msfs.data_dir / "msfs.log").read_text()


@pytest.mark.parametrize(
    "name", ["../../../../tmp/evil.png", "..\\..\\evil.png", "/etc/passwd.png", "a\0b.png"]
)
def test_a_file_name_never_becomes_a_path(msfs: Msfs, name: str) -> None:
    answer = msfs.upload(PNG, name)
    assert answer["error_code"] == 0
    digest = hashlib.sha256(PNG).hexdigest()
    assert answer["path"] == f"g0/{digest[:2]}/{digest[2:4]}/{digest}.png"
    stored = sorted(p.relative_to(msfs.data_dir) for p in msfs.data_dir.rglob("*") if p.is_file())
    assert [str(p) for p in stored if "evil" in str(p) or "passwd" in str(p)] == []


def test_a_bad_host_header_does_not_reach_the_url(msfs: Msfs) -> None:
    c = msfs.connection()
    c.putrequest("POST", "/", skip_host=True)
    c.putheader("Host", 'evil"><script>')
    c.putheader("Content-Type", f"multipart/form-data; boundary={BOUNDARY}")
    body = form(PNG, "h.png")
    c.putheader("Content-Length", str(len(body)))
    c.endheaders(body)
    answer = json.loads(c.getresponse().read())
    c.close()
    assert answer["url"].startswith(f"http://127.0.0.1:{msfs.port}/g0/")


def test_other_methods_are_405_and_garbage_is_400(msfs: Msfs) -> None:
    rsp = msfs.get("/", method="DELETE")
    assert (rsp.status, rsp.getheader("Allow")) == (405, "GET, HEAD, POST")
    assert msfs.raw(b"\x00\x01 nonsense\r\n\r\n").startswith(b"HTTP/1.1 400 Bad Request")
    assert msfs.get("/healthz").body == b"ok\n"
    metrics = msfs.get("/metrics").body.decode()
    assert "imreactor_msfs_uploads_total 0.0" in metrics
