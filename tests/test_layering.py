"""The layering, as an import test: a new arrow that breaks it fails here.

reactor (``net``) ← wire (``pdu``) ← servers; ``http`` sits on the reactor; storage
knows nothing above it; clients know only the wire (and ``accounts``, the tools'
one door to storage, for provisioning); server roles never import client code, and
of the servers only db_proxy_server touches storage. Every import counts, also
those inside functions and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import imreactor

SRC = Path(imreactor.__file__).parent


@dataclass(frozen=True)
class Rule:
    """Modules under ``importer`` may import only ``allowed`` (when given) and never
    ``forbidden`` (package prefixes of ``imreactor``)."""

    importer: str
    allowed: tuple[str, ...] | None = None
    forbidden: tuple[str, ...] = ()
    why: str = ""


RULES = [
    Rule("net", allowed=("net",), why="the reactor knows nothing above it"),
    Rule("logs", allowed=("logs",), why="every layer logs through it, the wire included"),
    Rule("pdu", allowed=("net", "pdu", "logs"), why="the wire sits on the reactor only"),
    Rule("http", allowed=("net", "http"), why="HTTP on the reactor knows no IM"),
    Rule("redis", allowed=("net", "redis"), why="the Redis client on the reactor knows no IM"),
    Rule("storage", allowed=("storage", "pdu"), why="storage knows nothing of servers"),
    Rule("accounts", allowed=("accounts", "pdu", "storage"), why="the tools' door to storage"),
    Rule(
        "client",
        forbidden=("storage", "servers", "admin", "cli"),
        why="clients know only the wire",
    ),
    Rule("servers", forbidden=("client", "admin", "cli"), why="servers never import clients"),
]
#: Of the servers, only db_proxy_server (and the tooling that provisions a suite through
#: ``accounts``) reaches storage.
STORAGE_USERS = ("servers.dbproxy",)


def _module_name(path: Path) -> tuple[str, str]:
    """``(module, package)`` of a source file, relative to ``imreactor``."""
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
        return ".".join(parts), ".".join(parts)
    return ".".join(parts), ".".join(parts[:-1])


def imports_of(source: str, package: str) -> set[str]:
    """The ``imreactor`` modules (relative names, e.g. ``net.loop``) ``source`` imports."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join([*base, *([node.module] if node.module else [])])
            elif (node.module or "").startswith("imreactor"):
                target = (node.module or "").removeprefix("imreactor").lstrip(".")
            else:
                continue
            # ``from . import pki`` names a module: count the names too.
            found.add(target)
            found.update(f"{target}.{a.name}".lstrip(".") for a in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("imreactor."):
                    found.add(alias.name.removeprefix("imreactor."))
    return found


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(module: str, imported: set[str]) -> list[str]:
    """Each broken rule of ``module`` importing ``imported``, as one line."""
    out = []
    top_level = {p.stem for p in SRC.iterdir() if p.suffix == ".py" or p.is_dir()}
    for rule in RULES:
        if not _under(module, rule.importer):
            continue
        for target in sorted(imported):
            head = target.split(".")[0]
            if head not in top_level:
                continue  # a name imported from a module, already counted as the module
            bad = any(_under(target, f) for f in rule.forbidden) or (
                rule.allowed is not None and not any(_under(target, a) for a in rule.allowed)
            )
            if bad:
                out.append(f"{module} imports {target}: {rule.why}")
    if _under(module, "servers") and not any(_under(module, s) for s in STORAGE_USERS):
        out += [
            f"{module} imports {t}: only db_proxy_server touches the database"
            for t in sorted(imported)
            if _under(t, "storage")
        ]
    return out


def test_the_layering_holds() -> None:
    problems: list[str] = []
    files = [p for p in SRC.rglob("*.py") if "proto" not in p.relative_to(SRC).parts]
    assert len(files) > 50  # the whole package, not an empty glob
    for path in files:
        module, package = _module_name(path)
        problems += violations(module, imports_of(path.read_text(), package))
    assert problems == []


def test_the_checker_sees_a_broken_arrow() -> None:
    # Relative, absolute, lazy and TYPE_CHECKING imports all count.
    source = (
        "from typing import TYPE_CHECKING\n"
        "from ..storage import open_storage\n"
        "if TYPE_CHECKING:\n"
        "    from imreactor.servers.msg import server\n"
        "def f() -> None:\n"
        "    import imreactor.admin\n"
    )
    imported = imports_of(source, "client")
    assert violations("client.blocking", imported) == [
        "client.blocking imports admin: clients know only the wire",
        "client.blocking imports servers.msg: clients know only the wire",
        "client.blocking imports servers.msg.server: clients know only the wire",
        "client.blocking imports storage: clients know only the wire",
        "client.blocking imports storage.open_storage: clients know only the wire",
    ]
    assert violations("net.loop", imports_of("from ..pdu import header\n", "net")) == [
        "net.loop imports pdu: the reactor knows nothing above it",
        "net.loop imports pdu.header: the reactor knows nothing above it",
    ]
    assert violations("servers.msg.delivery", {"storage"}) == [
        "servers.msg.delivery imports storage: only db_proxy_server touches the database"
    ]
    assert violations("servers.dbproxy.server", {"storage", "pdu"}) == []
