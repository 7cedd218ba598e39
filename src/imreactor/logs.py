"""Logging for every process: text or JSON lines, levels per module, and bursts told once.

One module holds the whole policy, so that every server role (and every command)
logs the same way:

- :func:`configure` installs one handler on stderr, formatted as text
  (``time level logger: message``) or as JSON, one object per line with ``time``
  (UTC, ISO 8601 with milliseconds), ``level``, ``role``, ``logger``, ``message``,
  and, where the call site passes them, ``conn_id``, ``user_id`` and ``msg_id``
  (``exc`` holds a traceback). Call sites pass ids with :func:`ids`::

      log.info("user %d logged in", uid, extra=ids(conn=conn.handle, user=uid))

- levels are set per logger (``{"imreactor.servers.msg": "debug"}``); a logger
  below a named one inherits its level, as :mod:`logging` does.
- :class:`RateLimitedLog` logs the first event of a burst of one kind at once,
  counts the rest for a window, and then says in one line how many it held back:
  a flood (late answers, throttled logins) costs two lines per window, not a line
  per PDU. Windows run on the loop's clock and timers.

This module imports nothing of the project, so that every layer (the wire
included) may use it. The configuration keys that reach it (``log_format``,
``log_levels``, ``log_window_s``) are :class:`imreactor.config.LogSettings`,
checked by :func:`format_problem` and :func:`levels_problem`.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import logging
import re
import sys
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import IO, Any, Protocol

FORMATS = ("text", "json")
"""The values of ``log_format`` (and ``--log-format``)."""

LEVELS = ("debug", "info", "warning", "error", "critical")
"""Level names a ``log_levels`` entry may give (any case)."""

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

DEFAULT_WINDOW_S = 10.0
"""How long :class:`RateLimitedLog` counts instead of logging, unless configured."""

#: Most kinds of events one RateLimitedLog tracks at once: keys name kinds, not peers,
#: so this is never reached by design; it bounds memory if a caller gets that wrong.
MAX_KEYS = 256

#: The ``extra=`` attributes that become JSON fields (their names in the output).
ID_FIELDS = ("conn_id", "user_id", "msg_id")

_MODULE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def ids(
    *, conn: int | str | None = None, user: int | None = None, msg: int | None = None
) -> dict[str, int | str]:
    """The ``extra=`` mapping that names the connection, user and message of a log line
    (those given and not 0: an id 0 means "none yet", as before login)."""
    out: dict[str, int | str] = {}
    if conn:
        out["conn_id"] = conn
    if user:
        out["user_id"] = user
    if msg:
        out["msg_id"] = msg
    return out


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in the text are escaped)."""

    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        out: dict[str, Any] = {
            "time": when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z",
            "level": record.levelname,
            "role": self.role,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in ID_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, ensure_ascii=False, default=str)


# -- checks (for the configuration and the command line) ------------------------------------


def format_problem(value: str) -> str | None:
    """Why ``value`` is not a log format, or None if it is one."""
    if value in FORMATS:
        return None
    return f"{value!r} is not a log format (give {' or '.join(FORMATS)})"


def level_problem(value: str) -> str | None:
    """Why ``value`` is not a level name, or None if it is one."""
    if isinstance(value, str) and value.lower() in LEVELS:
        return None
    return f"{value!r} is not a level (give {', '.join(LEVELS)})"


def module_problem(name: str) -> str | None:
    """Why ``name`` cannot be a logger to set a level on (the name not repeated), or None.

    A logger is named after its module, so a name under ``imreactor`` must be one of
    its modules or packages: a typo would otherwise set a level nobody logs at.
    """
    if not _MODULE_RE.fullmatch(name):
        return "not a module name (dotted identifiers, like imreactor.servers.msg)"
    if name == "imreactor" or name.startswith("imreactor."):
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return "imreactor has no such module"
    return None


def levels_problem(levels: Mapping[str, str]) -> tuple[str, str] | None:
    """``(entry, why)`` for the first bad entry of a module → level mapping, else None."""
    for name, level in levels.items():
        why = module_problem(name) or level_problem(level)
        if why is not None:
            return name, why
    return None


def parse_level_option(text: str) -> tuple[str, str]:
    """``--log-level`` text: ``LEVEL`` (every logger) → ``("", level)``, or
    ``MODULE=LEVEL`` → ``(module, level)``. ValueError says why not."""
    name, sep, level = text.rpartition("=")
    if sep and not name:
        raise ValueError(f"{text!r}: no module before '='")
    why = level_problem(level) or (module_problem(name) if name else None)
    if why is not None:
        raise ValueError(why if why.startswith("'") else f"{name!r}: {why}")
    return name, level.lower()


# -- setup ----------------------------------------------------------------------------------


@dataclass
class Settings:
    """What :func:`configure` applies: format, the level of every logger without one
    of its own, levels per module, and the window of :class:`RateLimitedLog`."""

    fmt: str = "text"
    level: str = "info"
    levels: Mapping[str, str] | None = None
    window_s: float = DEFAULT_WINDOW_S


_window_s = DEFAULT_WINDOW_S
_leveled: set[str] = set()


def configure(role: str, settings: Settings, stream: IO[str] | None = None) -> None:
    """Make the process log as ``settings`` say, under ``role`` (the JSON ``role``).

    May be called again (a server reconfigures once its file is read): the handler is
    replaced and the levels an earlier call set are undone first.
    """
    global _window_s
    handler = logging.StreamHandler(stream or sys.stderr)
    if settings.fmt == "json":
        handler.setFormatter(JsonFormatter(role))
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)  # not closed: it may write to stderr, which stays open
    root.addHandler(handler)
    root.setLevel(settings.level.upper())
    for name in _leveled:
        logging.getLogger(name).setLevel(logging.NOTSET)
    _leveled.clear()
    for name, level in (settings.levels or {}).items():
        logging.getLogger(name).setLevel(level.upper())
        _leveled.add(name)
    _window_s = settings.window_s


def add_arguments(ap: argparse.ArgumentParser, *, sub: bool = False) -> None:
    """``--log-format`` and ``--log-level`` (repeatable: ``LEVEL`` or ``MODULE=LEVEL``).

    ``sub``: for a subcommand's parser, where they may be given again after the
    command's name; they then replace those given before it.
    """
    ap.add_argument(
        "--log-format",
        choices=FORMATS,
        # SUPPRESS: a subcommand's parser must not overwrite what was given before it.
        default=argparse.SUPPRESS if sub else None,
        help="text (default) or json: one object per line (beats a server's log_format)",
    )
    ap.add_argument(
        "--log-level",
        action="append",
        type=_level_option,
        default=argparse.SUPPRESS if sub else [],
        metavar="[MODULE=]LEVEL",
        help="debug, info (default), warning, error; MODULE=LEVEL for one module and those"
        " under it (imreactor.servers.msg=debug); repeatable; beats a server's log_levels",
    )


def _level_option(text: str) -> tuple[str, str]:
    try:
        return parse_level_option(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def settings_of(
    args: argparse.Namespace,
    fmt: str = "text",
    levels: Mapping[str, str] | None = None,
    window_s: float = DEFAULT_WINDOW_S,
) -> Settings:
    """The settings of a configuration (``fmt``, ``levels``, ``window_s``) with the
    command line's ``--log-format`` and ``--log-level`` over them."""
    given: Iterable[tuple[str, str]] = getattr(args, "log_level", None) or []
    merged = dict(levels or {})
    level = "info"
    for name, value in given:
        if name:
            merged[name] = value
        else:
            level = value
    return Settings(getattr(args, "log_format", None) or fmt, level, merged, window_s)


def config_keys(args: argparse.Namespace) -> dict[str, Any]:
    """The ``log_*`` keys that carry the command line's ``--log-format`` and
    ``--log-level`` into the configuration of servers a command starts (``imreactor up``).
    A level for every logger becomes the level of ``imreactor``, the project's loggers."""
    keys: dict[str, Any] = {}
    if getattr(args, "log_format", None):
        keys["log_format"] = args.log_format
    levels = {name or "imreactor": level for name, level in getattr(args, "log_level", None) or []}
    if levels:
        keys["log_levels"] = levels
    return keys


def configure_server(role: str, args: argparse.Namespace, config: Any) -> None:
    """:func:`configure` for a server role from its configuration (the keys of
    :class:`imreactor.config.LogSettings`) and the command line."""
    configure(role, settings_of(args, config.log_format, config.log_levels, config.log_window_s))


# -- bursts ---------------------------------------------------------------------------------


class Clocked(Protocol):
    """What :class:`RateLimitedLog` needs of an event loop: its clock and its timers."""

    def time(self) -> float: ...

    def call_later(self, delay_s: float, callback: Callable[..., Any], *args: Any) -> object: ...


class _Window:
    __slots__ = ("ends", "suppressed")

    def __init__(self, ends: float) -> None:
        self.ends = ends
        self.suppressed = 0


class RateLimitedLog:
    """Log one line per kind of event per window, with a count of those held back.

    ``log(loop, key, msg, *args)`` logs at once if no event of ``key`` was logged on
    ``loop`` in the last window (``window_s``, default: the process's
    ``log_window_s``), and counts the event otherwise; the first counted event
    arranges one line at the window's end on ``loop``'s timers:
    ``<key>: N more in the last W s, not logged``. ``key`` names a kind of event
    ("late answer IMValidateRsp"), never a peer or account, so that a flood from
    many sources is still one line. Windows are kept per loop (on its clock), so
    servers and tests that run several loops in one process never share one.
    Loop thread only.
    """

    def __init__(
        self, logger: logging.Logger, level: int = logging.WARNING, *, window_s: float | None = None
    ) -> None:
        self.logger = logger
        self.level = level
        self._window_override = window_s
        self._loops: weakref.WeakKeyDictionary[Clocked, dict[str, _Window]] = (
            weakref.WeakKeyDictionary()
        )

    @property
    def window_s(self) -> float:
        return self._window_override if self._window_override is not None else _window_s

    def log(
        self,
        loop: Clocked,
        key: str,
        msg: str,
        *args: object,
        extra: Mapping[str, object] | None = None,
    ) -> bool:
        """Log or count one event of kind ``key``; True if it was logged."""
        windows = self._loops.get(loop)
        if windows is None:
            windows = self._loops[loop] = {}
        now = loop.time()
        window = windows.get(key)
        if window is not None and now < window.ends:
            window.suppressed += 1
            if window.suppressed == 1:
                loop.call_later(window.ends - now, self._summarize, windows, key, window)
            return False
        if len(windows) >= MAX_KEYS:
            oldest = next(iter(windows))
            self._summarize(windows, oldest, windows[oldest])
        window_s = self.window_s
        windows[key] = _Window(now + window_s)
        if self.logger.isEnabledFor(self.level):
            self.logger.log(
                self.level,
                msg + " (more like it in the next %g s are counted, not logged)",
                *args,
                window_s,
                extra=extra,
            )
        return True

    def _summarize(self, windows: dict[str, _Window], key: str, window: _Window) -> None:
        """Log the count of ``window`` and forget it (unless a newer one replaced it)."""
        if windows.get(key) is not window:
            return
        del windows[key]
        if window.suppressed:
            self.logger.log(
                self.level,
                "%s: %d more in the last %g s, not logged",
                key,
                window.suppressed,
                self.window_s,
            )
