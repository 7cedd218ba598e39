"""The open-file limit helpers: raising never fails and reports what holds."""

from __future__ import annotations

import resource

import pytest

from imreactor.net import limits


def test_raise_reaches_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        got = limits.raise_open_files_limit()
        expected = limits.UNLIMITED_TARGET if hard == resource.RLIM_INFINITY else hard
        assert got == expected
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == expected
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_unlimited_hard_limit_asks_for_a_finite_soft_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[tuple[int, int]] = []
    inf = resource.RLIM_INFINITY
    monkeypatch.setattr(resource, "getrlimit", lambda _which: (1024, inf))
    monkeypatch.setattr(resource, "setrlimit", lambda _which, pair: asked.append(pair))
    limits.raise_open_files_limit()
    assert asked == [(limits.UNLIMITED_TARGET, inf)]


def test_a_refused_raise_keeps_the_old_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(_which: int, _pair: tuple[int, int]) -> None:
        raise ValueError("not allowed")

    monkeypatch.setattr(resource, "getrlimit", lambda _which: (512, 4096))
    monkeypatch.setattr(resource, "setrlimit", refuse)
    assert limits.raise_open_files_limit() == 512


def test_unlimited_soft_limit_reads_as_none(monkeypatch: pytest.MonkeyPatch) -> None:
    inf = resource.RLIM_INFINITY
    monkeypatch.setattr(resource, "getrlimit", lambda _which: (inf, inf))
    assert limits.open_files_limit() is None
    assert limits.raise_open_files_limit() is None
