"""msfs configuration (TOML table ``[msfs]``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ...config import ConfigError, LogSettings, check_host, check_minimums, option
from ..runner import DrainConfig

#: What a file type (the name's extension) may look like; the original's limit was 15 chars.
TYPE_RE = re.compile(r"[a-z0-9]{1,15}")


def check_types(key: str, value: list[str]) -> None:
    """Lowercase extensions without the dot, 1..15 letters or digits each."""
    for i, t in enumerate(value):
        if not TYPE_RE.fullmatch(t):
            raise ConfigError(f"{key}[{i}]: {t!r} is not a file type (lowercase a-z0-9, 1..15)")


def check_public_url(key: str, value: str) -> None:
    if value and not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", value):
        raise ConfigError(f"{key}: {value!r} is not an http(s) URL without query")


@dataclass
class MsfsConfig(DrainConfig, LogSettings):
    listen_host: str = option("127.0.0.1", "address msfs listens on", check=check_host)
    port: int = option(8700, "HTTP port: POST uploads, GET downloads")
    store_dir: str = option(
        "msfs", "directory the files are kept in (relative: to the working directory)"
    )
    public_url: str = option(
        "",
        "base of the url in upload answers (the msfsPrior login_server gives out);"
        " empty: http://<the upload's Host header>, as the original msfs did",
        check=check_public_url,
    )
    max_file_bytes: int = option(10 * 1024 * 1024, "largest file accepted (the original's 10 MiB)")
    allowed_types: list[str] = option(
        ["gif", "jpeg", "jpg", "png", "webp", "bmp"],
        "file types (name extensions) accepted; images among them must start like one",
        check=check_types,
    )
    worker_threads: int = option(2, "threads that hash, write and read files off the loop")
    max_pending: int = option(64, "uploads and downloads queued for the threads at most (then 503)")

    def __post_init__(self) -> None:
        check_minimums(self, "msfs", {"max_file_bytes": 1, "worker_threads": 1, "max_pending": 1})
