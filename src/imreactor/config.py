"""Server configuration: TOML files mapped onto dataclasses with documented defaults.

Each server has one dataclass whose fields are its keys; a field's default is
the key's default and the ``doc`` in its metadata says what it means
(``imreactor config defaults [ROLE]`` prints them all). A file may hold several
roles, one table each (``[login]``, ``[msg]``, ``[route]``, ``[dbproxy]``).
Unknown keys and wrongly typed values are errors, reported with the key's
name: a typo must not silently fall back to a default.

Values are checked as well as types, so that what a server would refuse (or die
on) is refused when the file is read, by ``imreactor config check`` and at start
alike, with the key, the value and why, in one line:

- a key named ``port`` or ``*_port`` is a port, 1..65535 (0 too where the default
  is 0 or the key's doc says what 0 means, "(0 = ...");
- a key named ``*_s`` (not ``*_per_s``) is a duration in seconds (or a list of them):
  never negative, and above 0 for timeouts, heartbeats and reconnect delays
  (``*timeout_s``, ``*heartbeat_s``, ``*delays_s``), where 0 would close everything at
  once or spin;
- a key declared with ``check=`` (:func:`option`) runs that check too: a host to
  listen on (:func:`check_host`), ``host:port`` lists (:func:`check_addresses`),
  storage URLs; and each role's ``__post_init__`` adds its own rules
  (:func:`check_minimums`, :func:`check_pair`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
import tomllib
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from . import logs
from .net.connection import is_port, parse_address

T = TypeVar("T")


class ConfigError(ValueError):
    """The configuration cannot be used as written."""


#: Durations for which 0 would mean a busy loop or a server that closes everything at once.
_NEVER_ZERO = ("timeout_s", "heartbeat_s", "delays_s")

Check = Callable[[str, Any], None]
"""``check(key, value)``: raise ConfigError (naming ``key``) for a value that cannot work."""


def option(default: Any, doc: str, *, check: Check | None = None) -> Any:
    """A configuration key: its default, a one-line description, and an optional value check."""
    metadata = {"doc": doc, "check": check}
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def check_host(key: str, value: str) -> None:
    """An address to listen on or connect to: an IP address, or a name that resolves."""
    try:
        ipaddress.ip_address(value)
        return
    except ValueError:
        pass
    if not value:
        raise ConfigError(f"{key}: empty; give an IP address or a host name")
    try:
        socket.getaddrinfo(value, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise ConfigError(f"{key}: {value!r} does not resolve ({exc})") from None


def check_addresses(key: str, value: list[str]) -> None:
    """A list of ``host:port`` (or ``host``, for the role's usual port) that all resolve."""
    for i, entry in enumerate(value):
        try:
            host, port = parse_address(entry, 1)
        except ValueError:
            raise ConfigError(f"{key}[{i}]: {entry!r} is not host:port") from None
        if port == 0:
            raise ConfigError(f"{key}[{i}]: {entry!r}: port 0 cannot be connected to")
        check_host(f"{key}[{i}]", host)


def check_origins(key: str, value: list[str]) -> None:
    """Web origins as browsers send them: ``scheme://host`` or ``scheme://host:port``,
    scheme http or https, no path and no trailing slash."""
    for i, entry in enumerate(value):
        scheme, sep, rest = entry.partition("://")
        host, _, port = rest.partition(":")
        if (
            not sep
            or scheme not in ("http", "https")
            or not host
            or "/" in rest
            or (port and not (port.isdigit() and 0 < int(port) < 65536))
        ):
            raise ConfigError(
                f"{key}[{i}]: {entry!r} is not an origin like https://chat.example:8443"
            )


def check_log_format(key: str, value: str) -> None:
    """``text`` or ``json``."""
    why = logs.format_problem(value)
    if why is not None:
        raise ConfigError(f"{key}: {why}")


def check_log_levels(key: str, value: dict[str, str]) -> None:
    """Module names (under ``imreactor``: modules that exist) mapped to level names."""
    bad = logs.levels_problem(value)
    if bad is not None:
        raise ConfigError(f"{key}.{bad[0]}: {bad[1]}")


@dataclasses.dataclass
class LogSettings:
    """The log keys every server role has (one table per role); :mod:`imreactor.logs`
    applies them. ``--log-format`` and ``--log-level`` on the command line beat them."""

    log_format: str = option(
        "text",
        "text: 'time level logger: message' lines; json: one object per line with time,"
        " level, role, logger, message and conn_id/user_id/msg_id where they apply",
        check=check_log_format,
    )
    log_levels: dict[str, str] = option(  # noqa: RUF009 - a field() factory
        {},
        'levels per module, e.g. {"imreactor.servers.msg" = "debug"} (modules under'
        " one named inherit its level; the rest log at info)",
        check=check_log_levels,
    )
    log_window_s: float = option(
        10.0,
        "a flood of one kind of warning (late answers, throttled logins, full pools, storage"
        " failures) is logged once per this window, then as one line with the count held"
        " back (0 = every one)",
    )


def _default_of(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def check_values(cls: type[Any], values: dict[str, Any], section: str) -> None:
    """The value rules of the module docstring, for the keys in ``values`` (typed already).

    Run before the dataclass is built, so that a bad value is named before any rule
    that combines keys (``__post_init__``) sees it.
    """
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue  # a default: valid by construction
        key, value, default = f"{section}.{f.name}", values[f.name], _default_of(f)
        if (f.name == "port" or f.name.endswith("_port")) and isinstance(value, int):
            zero = default == 0 or "(0 = " in f.metadata.get("doc", "")
            if not is_port(value, allow_zero=zero):
                raise ConfigError(f"{key}: {value} is not a port ({0 if zero else 1}..65535)")
        elif f.name.endswith("_s") and not f.name.endswith("_per_s"):
            positive = f.name.endswith(_NEVER_ZERO)
            for v in value if isinstance(value, list) else [value]:
                if isinstance(v, int | float) and (v < 0 or (v == 0 and positive)):
                    raise ConfigError(
                        f"{key}: {v!r} seconds; must be more than 0"
                        if v == 0
                        else f"{key}: {v!r} seconds; a duration is never negative"
                    )
        check: Check | None = f.metadata.get("check")
        if check is not None:
            check(key, value)


def _check_type(name: str, value: Any, annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(annotation):
            try:
                return _check_type(name, value, arm)
            except ConfigError:
                continue
        raise ConfigError(f"{name}: {value!r} is not {annotation}")
    if annotation is type(None):
        if value is None:
            return None
        raise ConfigError(f"{name}: expected nothing, got {value!r}")
    if origin is list:
        (item,) = typing.get_args(annotation)
        if not isinstance(value, list):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        return [_check_type(f"{name}[{i}]", v, item) for i, v in enumerate(value)]
    if origin is dict:
        key_type, item = typing.get_args(annotation)
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a table, got {value!r}")
        return {
            _check_type(f"{name} key {k!r}", k, key_type): _check_type(f"{name}.{k}", v, item)
            for k, v in value.items()
        }
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, float, str, bool):
        if type(value) is not annotation:
            raise ConfigError(f"{name}: expected {annotation.__name__}, got {value!r}")
        return value
    raise ConfigError(f"{name}: unsupported type {annotation}")


def check_minimums(config: Any, section: str, minimums: dict[str, float]) -> None:
    """ConfigError naming the first key of ``config`` whose value is below its minimum.

    For a dataclass's ``__post_init__``: :func:`from_mapping` checks types, this the
    ranges no type rules out.
    """
    for key, minimum in minimums.items():
        value = getattr(config, key)
        if value < minimum:
            raise ConfigError(f"{section}.{key}: must be at least {minimum}, got {value!r}")


def check_pair(config: Any, section: str, first: str, second: str) -> None:
    """ConfigError unless keys ``first`` and ``second`` are both set or both empty."""
    if bool(getattr(config, first)) != bool(getattr(config, second)):
        raise ConfigError(f"{section}: {first} and {second} go together (set both, or neither)")


def from_mapping(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build ``cls`` from ``data``; every key must be a field of ``cls``."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    prefix = f"{where}." if where else ""
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(prefix + k for k in unknown)}")
    kwargs = {k: _check_type(prefix + k, v, hints[k]) for k, v in data.items()}
    check_values(cls, kwargs, where or cls.__name__)
    return cls(**kwargs)


def load(cls: type[T], path: str | Path | None, section: str) -> T:
    """Read table ``[section]`` of the TOML file at ``path`` into ``cls``; no file: defaults."""
    if path is None:
        return cls()
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    table = doc.get(section, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [{section}] must be a table")
    return from_mapping(cls, table, section)


def describe(cls: type[Any], section: str) -> str:
    """A commented TOML table of every key of ``cls`` with its default.

    The text is valid TOML that :func:`load` reads back as ``cls()``; a key whose
    default is None (no TOML form) appears as a comment.
    """
    lines = [f"[{section}]"]
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        lines.extend(f"# {line}".rstrip() for line in str(f.metadata.get("doc", "")).splitlines())
        if default is None:
            lines.append(f"# {f.name} = (unset by default)")
        else:
            lines.append(f"{f.name} = {toml_value(default)}")
    return "\n".join(lines) + "\n"


def dump(tables: dict[str, dict[str, Any]]) -> str:
    """TOML text for ``{table: {key: value}}`` (str, int, float, bool and lists of them)."""
    out = []
    for name, table in tables.items():
        out.append(f"[{name}]")
        out.extend(f"{key} = {toml_value(value)}" for key, value in table.items())
        out.append("")
    return "\n".join(out)


def toml_value(value: Any) -> str:
    """TOML text of one str, int, float, bool, list or table (dict, as an inline table) of
    them; TypeError for anything else."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + "".join(_TOML_ESCAPES.get(c, c) for c in value) + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_value(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, int | float):
        return repr(value)  # Python's repr of a float (inf and nan included) is TOML too
    raise TypeError(f"no TOML form for {value!r}")


# A TOML basic string may not hold a quote, a backslash or a control character as is.
_TOML_ESCAPES = {c: f"\\u{ord(c):04x}" for c in (*map(chr, range(0x20)), "\x7f")} | {
    '"': '\\"',
    "\\": "\\\\",
    "\n": "\\n",
    "\t": "\\t",
}
