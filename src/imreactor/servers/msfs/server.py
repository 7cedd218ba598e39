"""msfs: uploads by ``multipart/form-data`` POST, downloads by GET, on the reactor.

The wire is the original msfs's (docs/servers.md has it in full):

- ``POST`` to any path with one file part → ``200`` and, as ``text/html``
  (the iOS and Mac clients accept no other type),
  ``{"error_code":0,"error_msg":"成功","path":"g0/..","url":"http://host/g0/.."}``;
  a request msfs cannot take gets the same shape with a non-zero ``error_code``
  (:mod:`.multipart` lists them) and empty ``path`` and ``url``.
- ``GET``/``HEAD`` of ``/<path>`` → the file, with single byte ranges (206/416).

Names are the SHA-256 of the content (``g0/ab/cd/<hash>[_WxH].<type>``), so the
same image uploaded twice is stored once and no client-supplied name becomes a
path. The size limit applies to the request before its body is kept (see
:mod:`imreactor.http`); hashing, storing and reading run on worker threads, and
their answers come back to the loop. Only the loop thread touches the server.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable
from pathlib import Path

from ...http import TEXT, HttpConnections, Pending, Reply, Request, Response, Router
from ...net import EventLoop, Server
from ...net.workers import PoolFull, WorkerPool
from ..metrics import Metrics
from ..runner import Done, when_idle
from . import multipart
from .config import MsfsConfig
from .ranges import Unsatisfiable, byte_range
from .storage import KEY_RE, FileStorage, Storage

log = logging.getLogger(__name__)

#: The upload answer's type: what the original sent, and all the iOS/Mac clients accept.
ANSWER_TYPE = "text/html; charset=utf-8"
#: Room for the multipart framing around the file, beyond ``max_file_bytes``.
MULTIPART_OVERHEAD_BYTES = 16 * 1024
#: The first bytes of each image type msfs accepts; an upload must start with one of them.
IMAGE_MAGIC: dict[str, tuple[bytes, ...]] = {
    "jpg": (b"\xff\xd8\xff",),
    "jpeg": (b"\xff\xd8\xff",),
    "png": (b"\x89PNG\r\n\x1a\n",),
    "gif": (b"GIF87a", b"GIF89a"),
    "bmp": (b"BM",),
    "webp": (b"RIFF",),  # and "WEBP" at offset 8, checked below
}
MEDIA_TYPES = {
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "png": "image/png",
    "gif": "image/gif",
    "bmp": "image/bmp",
    "webp": "image/webp",
}
#: A Host header worth echoing into a URL: a name or address and a port, nothing else.
_HOST_RE = re.compile(r"[A-Za-z0-9.\-]{1,253}(:\d{1,5})?|\[[0-9A-Fa-f:.]{2,45}\](:\d{1,5})?")
#: An answer and the counter it adds to ("" for none).
Outcome = tuple[Response | Reply, str]
_MESSAGES = {
    multipart.OK: "成功",
    multipart.TOO_LARGE: "上传文件过大",
    multipart.TYPE_REFUSED: "文件类型不允许",
    multipart.STORE_FAILED: "存储失败",
}


def answer(code: int, path: str = "", url: str = "", status: int = 200) -> Response:
    """The upload answer, keys in the original's order."""
    body = {
        "error_code": code,
        "error_msg": _MESSAGES.get(code, "格式错误"),
        "path": path,
        "url": url,
    }
    return status, ANSWER_TYPE, json.dumps(body, ensure_ascii=False).encode()


def is_image(file_type: str, data: bytes) -> bool | None:
    """Whether ``data`` starts like a ``file_type`` image; None for a type that is no image."""
    magic = IMAGE_MAGIC.get(file_type)
    if magic is None:
        return None
    if file_type == "webp" and data[8:12] != b"WEBP":
        return False
    return data.startswith(magic)


class MsfsServer:
    """The listener, the worker pool and the storage of one msfs. Loop thread only."""

    def __init__(self, loop: EventLoop, config: MsfsConfig, storage: Storage | None = None) -> None:
        self.loop = loop
        self.config = config
        self.storage: Storage = storage or FileStorage(Path(config.store_dir))
        self.allowed = frozenset(config.allowed_types)
        self.workers = WorkerPool(
            loop, config.worker_threads, max_pending=config.max_pending, name="msfs"
        )
        #: uploads stored, downloads served, uploads refused; counted on the loop thread.
        self.counts = {"uploads": 0, "downloads": 0, "refused": 0}
        self._server: Server | None = None
        self._port = 0  # kept past the listener's close: a drain still answers uploads
        self.router = Router()
        self.router.add(
            "/",
            self._http_file,
            max_body_bytes=config.max_file_bytes + MULTIPART_OVERHEAD_BYTES,
            too_large=self._too_large,
        )
        self.metrics = Metrics(loop, "msfs")
        for name in self.counts:
            self.metrics.counted(f"imreactor_msfs_{name}", f"msfs {name}", self._reader(name))
        self.metrics.gauge(
            "imreactor_msfs_queue_depth",
            "Uploads and downloads queued or running",
            lambda: self.workers.pending,
        )
        self.metrics.routes(self.router)  # /metrics, /healthz, /readyz
        self.http = HttpConnections(self.router)

    def _reader(self, name: str) -> Callable[[], float]:
        return lambda: self.counts[name]

    def start(self) -> None:
        c = self.config
        self._server = self.loop.listen(c.listen_host, c.port, self.http)
        self._port = self._server.port

    @property
    def ports(self) -> dict[str, int]:
        return {"http": self._port} if self._port else {}

    def drain(self, done: Done) -> None:
        """Stop accepting; finish the uploads and downloads in progress (an upload still
        arriving is received, stored and answered) with ``Connection: close``; close idle
        connections; ``done()`` once every connection is closed."""
        self._close_listener()
        self.http.finish()
        when_idle(self.loop, lambda: self.http.open > 0, done)

    def close(self) -> None:
        self.metrics.close()
        self._close_listener()
        self.workers.shutdown()

    def _close_listener(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    # -- HTTP -----------------------------------------------------------------------------

    def _http_file(self, request: Request) -> Response | Reply | Pending:
        if request.method == "POST":
            return self._upload(request)
        if request.method in ("GET", "HEAD"):
            return self._download(request)
        return Reply(405, TEXT, b"method not allowed\n", {"Allow": "GET, HEAD, POST"})

    def _too_large(self, request: Request) -> Response:
        self.counts["refused"] += 1
        log.warning("upload refused: Content-Length over %d", self.config.max_file_bytes)
        return answer(multipart.TOO_LARGE)

    def _upload(self, request: Request) -> Response | Reply | Pending:
        base = self._base_url(request)
        return self._off_loop(
            lambda: self._store(request.headers.get("content-type", ""), request.body, base),
            lambda exc: answer(multipart.STORE_FAILED, status=500 if exc else 503),
        )

    def _download(self, request: Request) -> Response | Reply | Pending:
        key = request.path[1:]
        if not KEY_RE.fullmatch(key):
            return 404, TEXT, b"not found\n"
        spec = request.headers.get("range")
        return self._off_loop(
            lambda: self._fetch(key, spec),
            lambda exc: (500, TEXT, b"internal error\n") if exc else (503, TEXT, b"busy\n"),
        )

    def _off_loop(
        self,
        work: Callable[[], Outcome],
        failed: Callable[[BaseException | None], Response | Reply],
    ) -> Response | Reply | Pending:
        """Run ``work`` on a worker; its answer (or ``failed(exc)``) completes a Pending,
        and the counter it names goes up, on the loop thread.

        ``failed(None)`` answers at once when the pool is full.
        """
        pending = Pending()

        def done(result: Outcome | None, exc: BaseException | None) -> None:
            if exc is not None or result is None:
                log.error("msfs work failed", exc_info=exc)
                pending.complete(failed(exc or RuntimeError("no answer")))
                return
            reply, counter = result
            if counter:
                self.counts[counter] += 1
            pending.complete(reply)

        try:
            self.workers.submit(work, callback=done)
        except PoolFull:
            log.warning("msfs busy: %d requests queued", self.workers.pending)
            return failed(None)
        return pending

    def _base_url(self, request: Request) -> str:
        if self.config.public_url:
            return self.config.public_url.rstrip("/")
        host = request.headers.get("host", "")
        if not _HOST_RE.fullmatch(host):
            host = f"{self.config.listen_host}:{self.ports.get('http', self.config.port)}"
        return f"http://{host}"

    # -- on worker threads: they read the config and call the storage, nothing else ---------

    def _store(self, content_type: str, body: bytes, base: str) -> Outcome:
        try:
            upload = multipart.parse_upload(content_type, body)
        except multipart.UploadError as exc:
            log.warning("upload refused (error_code %d): %s", exc.code, exc)
            return answer(exc.code), "refused"
        if len(upload.data) > self.config.max_file_bytes:
            return answer(multipart.TOO_LARGE), "refused"
        if upload.file_type not in self.allowed or is_image(upload.file_type, upload.data) is False:
            log.warning("upload refused: not an allowed %r file", upload.file_type[:15])
            return answer(multipart.TYPE_REFUSED), "refused"
        digest = hashlib.sha256(upload.data).hexdigest()
        key = f"g0/{digest[:2]}/{digest[2:4]}/{digest}{upload.size_hint}.{upload.file_type}"
        self.storage.put(key, upload.data)
        log.info("stored %s (%d bytes)", key, len(upload.data))
        return answer(multipart.OK, key, f"{base}/{key}"), "uploads"

    def _fetch(self, key: str, spec: str | None) -> Outcome:
        size = self.storage.size(key)
        if size is None:
            return (404, TEXT, b"not found\n"), ""
        file_type = key.rpartition(".")[2]
        headers = {
            "Accept-Ranges": "bytes",
            "ETag": f'"{key.rpartition("/")[2].split(".")[0].split("_")[0]}"',
            "Cache-Control": "public, max-age=31536000, immutable",  # a name never changes
            "X-Content-Type-Options": "nosniff",
        }
        media = MEDIA_TYPES.get(file_type)
        if media is None:  # not an image: a download, never rendered by a browser
            media = "application/octet-stream"
            headers["Content-Disposition"] = "attachment"
        try:
            span = byte_range(spec, size)
        except Unsatisfiable:
            headers["Content-Range"] = f"bytes */{size}"
            return Reply(416, TEXT, b"range not satisfiable\n", headers), ""
        if span is None:
            return Reply(200, media, self.storage.read(key, 0, size), headers), "downloads"
        first, last = span
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        data = self.storage.read(key, first, last - first + 1)
        return Reply(206, media, data, headers), "downloads"
