"""StaticFiles: only the files of its directory, read once, with caching and safety headers."""

from __future__ import annotations

from pathlib import Path

import pytest

from imreactor.http import Reply, Request
from imreactor.static import StaticFiles


def get(files: StaticFiles, path: str, method: str = "GET", **headers: str) -> Reply:
    answer = files(Request(method, path, "", headers))
    if isinstance(answer, tuple):
        return Reply(*answer)
    assert isinstance(answer, Reply)
    return answer


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    (root / "js").mkdir(parents=True)
    (root / "index.html").write_text("<h1>chat</h1>")
    (root / "js" / "app.js").write_text("console.log(1)")
    (root / "notes.bak").write_text("not served")
    (tmp_path / "secret.txt").write_text("outside")
    return root


def test_the_prefix_serves_the_index_and_names_serve_their_files(site: Path) -> None:
    files = StaticFiles(site, "/web/")
    index = get(files, "/web/")
    assert index.status == 200 and index.body == b"<h1>chat</h1>"
    assert index.content_type.startswith("text/html")
    script = get(files, "/web/js/app.js")
    assert script.body == b"console.log(1)" and script.content_type.startswith("text/javascript")
    assert script.headers["X-Content-Type-Options"] == "nosniff"
    assert "script-src 'self'" in script.headers["Content-Security-Policy"]


@pytest.mark.parametrize(
    "path",
    [
        "/web/../secret.txt",
        "/web/%2e%2e/secret.txt",
        "/web/notes.bak",
        "/web/js",
        "/web//etc/passwd",
    ],
)
def test_nothing_outside_the_files_read_at_start_is_served(site: Path, path: str) -> None:
    assert get(StaticFiles(site, "/web/"), path).status == 404


def test_a_file_added_after_start_is_not_served(site: Path) -> None:
    files = StaticFiles(site, "/")
    (site / "later.js").write_text("x")
    assert get(files, "/later.js").status == 404
    assert files.names == ["index.html", "js/app.js"]


def test_a_matching_etag_gets_304_without_a_body(site: Path) -> None:
    files = StaticFiles(site, "/")
    first = get(files, "/js/app.js")
    again = get(files, "/js/app.js", **{"if-none-match": first.headers["ETag"]})
    assert again.status == 304 and again.body == b""
    assert get(files, "/js/app.js", **{"if-none-match": '"other"'}).status == 200


def test_methods_other_than_get_and_head_are_refused(site: Path) -> None:
    files = StaticFiles(site, "/")
    refused = get(files, "/", method="POST")
    assert refused.status == 405 and refused.headers["Allow"] == "GET, HEAD"
    assert get(files, "/", method="HEAD").status == 200


def test_a_directory_without_an_index_or_a_bad_prefix_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no index\.html"):
        StaticFiles(tmp_path)
    (tmp_path / "index.html").write_text("x")
    with pytest.raises(ValueError, match="must end with"):
        StaticFiles(tmp_path, "/web")


def test_a_library_directory_needs_no_index_and_its_prefix_is_not_found(tmp_path: Path) -> None:
    (tmp_path / "lib.js").write_text("x")
    files = StaticFiles(tmp_path, "/vendor/", index=False)
    assert get(files, "/vendor/lib.js").status == 200
    assert get(files, "/vendor/").status == 404
    assert get(files, "/vendor").status == 404
