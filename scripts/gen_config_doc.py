#!/usr/bin/env python3
"""Write the key tables of ``docs/configuration.md`` from the configuration dataclasses.

The tables sit between the ``<!-- keys:begin -->`` and ``<!-- keys:end -->`` markers; the
rest of the page is written by hand. One table per role of
``imreactor.servers.confimport.ROLES``, one row per field: its name, type, default (as
TOML) and the ``doc`` of its metadata.

    .venv/bin/python scripts/gen_config_doc.py           # rewrite the tables in place
    .venv/bin/python scripts/gen_config_doc.py --check   # exit 1 if the page is stale
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from pathlib import Path
from typing import Any

from imreactor.config import toml_value
from imreactor.servers.confimport import ROLE_SERVERS, ROLES

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "configuration.md"
BEGIN = "<!-- keys:begin -->"
END = "<!-- keys:end -->"
TYPE_NAMES = {str: "string", int: "integer", float: "float", bool: "boolean"}


def type_name(annotation: Any) -> str:
    """A reader's name for a field type: ``string``, ``list of float``, ..."""
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        return f"list of {type_name(item)}s"
    if typing.get_origin(annotation) is dict:
        key, item = typing.get_args(annotation)
        return f"table of {type_name(key)} to {type_name(item)}"
    if annotation in TYPE_NAMES:
        return TYPE_NAMES[annotation]
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if len(args) == 1:  # X | None
        return f"{type_name(args[0])} (optional)"
    raise TypeError(f"no name for {annotation!r}")


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def tables() -> str:
    """The Markdown between the markers."""
    out = [
        "<!-- Written by scripts/gen_config_doc.py from the dataclasses; edit those. -->",
        "",
    ]
    for role, cls in ROLES.items():
        hints = typing.get_type_hints(cls)
        out += [
            f"### `[{role}]`: {ROLE_SERVERS[role]}",
            "",
            "| key | type | default | meaning |",
            "|---|---|---|---|",
        ]
        for f in dataclasses.fields(cls):
            if f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = f.default
            shown = "(unset)" if default is None else f"`{cell(toml_value(default))}`"
            doc = cell(" ".join(str(f.metadata.get("doc", "")).split()))
            out.append(f"| `{f.name}` | {type_name(hints[f.name])} | {shown} | {doc} |")
        out.append("")
    return "\n".join(out)


def render(page: str) -> str:
    """``page`` with the text between the markers replaced; ValueError without markers."""
    start, end = page.find(BEGIN), page.find(END)
    if start < 0 or end < start:
        raise ValueError(f"{DOC}: the markers {BEGIN} and {END} are missing")
    return page[: start + len(BEGIN)] + "\n" + tables() + "\n" + page[end:]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if the page is stale")
    args = ap.parse_args()
    page = DOC.read_text(encoding="utf-8")
    new = render(page)
    if args.check:
        if new != page:
            print(f"{DOC} is stale: run scripts/gen_config_doc.py", file=sys.stderr)
            return 1
        return 0
    if new != page:
        DOC.write_text(new, encoding="utf-8")
        print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
