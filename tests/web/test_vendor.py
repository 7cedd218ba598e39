"""The vendored browser libraries are exactly the pinned releases (no hand edits)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def vendor_js() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vendor_js", ROOT / "scripts" / "vendor_js.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["vendor_js"] = module  # dataclasses look their module up while building
    spec.loader.exec_module(module)
    return module


def test_every_vendored_file_matches_its_pinned_release() -> None:
    assert vendor_js().check() == []


def test_an_edited_file_is_found(tmp_path: Path) -> None:
    script = vendor_js()
    edited = tmp_path / "vendor"
    edited.mkdir()
    for path in (ROOT / "src" / "imreactor" / "web" / "vendor").iterdir():
        (edited / path.name).write_bytes(path.read_bytes())
    (edited / "uPlot.min.css").write_bytes(b"/* edited */")
    assert script.check(edited) == ["uPlot.min.css: differs from uplot 1.6.32"]
