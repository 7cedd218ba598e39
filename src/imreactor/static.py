"""Static files for the HTTP routes: a directory shipped with the package, served from memory.

The web chat and the dashboard are plain files (HTML, CSS, JavaScript, with any library
vendored beside them): no build step, nothing fetched from elsewhere. :class:`StaticFiles`
reads every file of one directory tree once, when it is built, and answers ``GET``/``HEAD``
for exactly those names; no part of a request path ever becomes a file system path, so
``..``, encoded slashes or symlinks planted later cannot reach another file.

Each answer carries a strong ``ETag`` (a hash of the content; ``If-None-Match`` gets
``304``), ``Cache-Control: no-cache`` (the browser revalidates, so an upgraded suite is
seen at once), ``X-Content-Type-Options: nosniff`` and a Content-Security-Policy that lets
a page load only the suite's own files and open WebSockets (its scripts speak the IM
protocol over ``ws:``/``wss:``), with no inline script and no framing by other sites.
"""

from __future__ import annotations

import hashlib
from http import HTTPStatus
from pathlib import Path

from .http import TEXT, Answer, Reply, Request

#: Content types by file suffix; a file with another suffix is not served.
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".json": "application/json; charset=utf-8",
    ".proto": "text/plain; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": TEXT,
}

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data: blob: http: https:; "
    "style-src 'self'; script-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'"
)


class StaticFiles:
    """A route handler serving the files under ``root`` at ``prefix``.

    ``prefix`` ends with ``/``; ``prefix`` itself (and ``prefix`` without its slash)
    serves ``index.html``, which ``root`` must have unless ``index`` is False (a
    directory of libraries, say: then ``prefix`` itself is ``404``). Files whose suffix
    is not in :data:`CONTENT_TYPES` are left out. Methods other than GET and HEAD get
    ``405``; unknown names ``404``.
    """

    def __init__(self, root: Path, prefix: str = "/", *, index: bool = True) -> None:
        if not prefix.endswith("/"):
            raise ValueError(f"static prefix must end with '/': {prefix!r}")
        self.prefix = prefix
        self._files: dict[str, tuple[str, bytes, str]] = {}
        for path in sorted(root.rglob("*")):
            content_type = CONTENT_TYPES.get(path.suffix)
            if content_type is None or not path.is_file():
                continue
            body = path.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            self._files[path.relative_to(root).as_posix()] = (content_type, body, etag)
        if index and "index.html" not in self._files:
            raise ValueError(f"{root} has no index.html")

    @property
    def names(self) -> list[str]:
        """The names served, relative to the prefix."""
        return sorted(self._files)

    def __call__(self, request: Request) -> Answer:
        if request.method not in ("GET", "HEAD"):
            return Reply(
                HTTPStatus.METHOD_NOT_ALLOWED,
                TEXT,
                b"only GET and HEAD\n",
                {"Allow": "GET, HEAD"},
            )
        name = request.path[len(self.prefix) :] if request.path.startswith(self.prefix) else ""
        found = self._files.get(name or "index.html")
        if found is None:
            return HTTPStatus.NOT_FOUND, TEXT, b"not found\n"
        content_type, body, etag = found
        headers = {
            "ETag": etag,
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
            "Referrer-Policy": "no-referrer",
        }
        if request.headers.get("if-none-match") == etag:
            return Reply(HTTPStatus.NOT_MODIFIED, content_type, b"", headers)
        return Reply(HTTPStatus.OK, content_type, body, headers)
