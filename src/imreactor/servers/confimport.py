"""Import the original TeamTalk ``key=value`` .conf files as imreactor TOML.

The original servers read ``loginserver.conf``, ``msgserver.conf``,
``routeserver.conf`` and ``dbproxyserver.conf`` (also found as
``login_server.conf`` and so on): one
``key=value`` per line, ``#`` starts a comment anywhere on a line, blanks around
keys and values do not count, and numbered pairs such as ``DBServerIP1`` /
``DBServerPort1``, ``DBServerIP2`` / ``DBServerPort2`` list peer servers, read
from 1 up to the first missing pair.

:func:`import_conf` maps every key that has a counterpart in the role's config
dataclass and lists every other key, with the reason it is left out;
:func:`render` turns that into TOML that :func:`imreactor.config.load` accepts.
Nothing is dropped silently: a key this module does not know is listed too.

Stricter than the original, on purpose: a line without ``=``, a key given twice
(the original kept the first one) and a port or count that is not a plain
number (the original's ``atoi`` read ``"80x"`` as 80) are errors that name the
line, because a half-understood file would start a server on the wrong port.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..config import ConfigError, dump, from_mapping
from .dbproxy.config import DbProxyConfig
from .login.config import LoginConfig
from .msfs.config import MsfsConfig
from .msg.config import MsgConfig
from .route.config import RouteConfig

ROLES: dict[str, type[Any]] = {
    "login": LoginConfig,
    "msg": MsgConfig,
    "route": RouteConfig,
    "dbproxy": DbProxyConfig,
    "msfs": MsfsConfig,
}
"""Every server role with a configuration: role (its TOML table name) → its dataclass."""

ROLE_SERVERS = {
    "login": "login_server",
    "msg": "msg_server",
    "route": "route_server",
    "dbproxy": "db_proxy_server",
    "msfs": "msfs",
}
"""The original server each role's .conf file belongs to."""

MAX_PORT = 65535
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*\Z")
_SECRET = re.compile(r"password|aeskey|auth", re.IGNORECASE)


class ConfImportError(ValueError):
    """The .conf file cannot be imported as written; the message names the line."""


@dataclass(frozen=True)
class ConfEntry:
    """One ``key=value`` line of a .conf file (``line`` counts from 1)."""

    key: str
    value: str
    line: int


@dataclass(frozen=True)
class Ignored:
    """A key left out of the import, and why."""

    key: str
    value: str
    reason: str


@dataclass
class Imported:
    """The result of an import: the TOML table for ``role`` and what was left out."""

    role: str
    source: str
    table: dict[str, Any] = field(default_factory=dict)
    ignored: list[Ignored] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def parse_conf(data: bytes, source: str = "<conf>") -> list[ConfEntry]:
    """The entries of a .conf file, in file order.

    Comments may be in any encoding (the originals have GBK and UTF-8 Chinese ones);
    keys and values must be UTF-8. Raises ConfImportError for a line that is not
    blank, a comment or ``key=value``, for a bad key and for a key given twice.
    """
    entries: list[ConfEntry] = []
    first_line: dict[str, int] = {}
    for number, raw in enumerate(data.splitlines(), 1):
        where = f"{source}:{number}"
        content = raw.split(b"#", 1)[0]
        try:
            text = content.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise ConfImportError(f"{where}: not UTF-8 text") from None
        if not text:
            continue
        key, sep, value = text.partition("=")
        key, value = key.strip(), value.strip()
        if not sep:
            raise ConfImportError(f"{where}: expected key=value, got {text!r}")
        if not _KEY.match(key):
            raise ConfImportError(f"{where}: {key!r} is not a key name")
        if key in first_line:
            raise ConfImportError(
                f"{where}: {key} is given again (first on line {first_line[key]})"
            )
        first_line[key] = number
        entries.append(ConfEntry(key, value, number))
    return entries


def import_conf(data: bytes, role: str, source: str = "<conf>") -> Imported:
    """Map the .conf file ``data`` onto the TOML table of ``role`` (a key of ROLES).

    The table holds only keys the file sets (everything else keeps its default) and
    is checked against the role's dataclass. Raises ConfImportError for a malformed
    file, a bad value, an unknown ``role``, or a file of which nothing maps to
    ``role`` (most likely the file of another role).
    """
    if role not in ROLES:
        raise ConfImportError(f"unknown role {role!r} (expected {', '.join(ROLES)})")
    entries = parse_conf(data, source)
    conf = _Conf(entries, source)
    result = Imported(role, source)
    _IMPORTERS[role](conf, result)
    for entry in conf.unused():
        result.ignored.append(
            Ignored(entry.key, entry.value, f"not a {ROLE_SERVERS[role]} setting")
        )
    if not result.table:
        raise ConfImportError(
            f"{source}: nothing in it maps to [{role}]; is it a {ROLE_SERVERS[role]} file?"
        )
    try:
        from_mapping(ROLES[role], result.table, role)
    except ConfigError as exc:  # a mapping bug, not the user's: still say what failed
        raise ConfImportError(f"{source}: imported table is invalid: {exc}") from exc
    return result


def render(imported: Imported) -> str:
    """TOML text for an import: a comment listing what was left out, then the table."""
    lines = [
        f"# [{imported.role}] imported from {imported.source}"
        f" (TeamTalk {ROLE_SERVERS[imported.role]}).",
        f"# Keys not set here keep their defaults: imreactor config defaults {imported.role}",
    ]
    lines.extend(f"# {note}" for note in imported.notes)
    if imported.ignored:
        lines.append("# Not imported:")
        for item in imported.ignored:
            shown = "(not shown)" if _SECRET.search(item.key) else item.value
            lines.append(f"#   {item.key}={shown}  -- {item.reason}")
    return "\n".join(lines) + "\n" + dump({imported.role: imported.table})


# -- reading values ----------------------------------------------------------------------


class _Conf:
    """The entries by key, remembering which ones an importer has used."""

    def __init__(self, entries: list[ConfEntry], source: str) -> None:
        self.source = source
        self._by_key = {e.key: e for e in entries}
        self._order = entries
        self._used: set[str] = set()

    def get(self, key: str) -> ConfEntry | None:
        entry = self._by_key.get(key)
        if entry is not None:
            self._used.add(key)
        return entry

    def take_matching(self, pattern: re.Pattern[str]) -> list[ConfEntry]:
        """Every not yet used entry whose key matches ``pattern``, marked used."""
        found = [e for e in self._order if e.key not in self._used and pattern.match(e.key)]
        self._used.update(e.key for e in found)
        return found

    def unused(self) -> list[ConfEntry]:
        return [e for e in self._order if e.key not in self._used]

    def error(self, entry: ConfEntry, what: str) -> ConfImportError:
        return ConfImportError(f"{self.source}:{entry.line}: {entry.key}={entry.value!r}: {what}")

    def number(self, entry: ConfEntry, low: int, high: int | None = None) -> int:
        text = entry.value
        if not text.isascii() or not text.isdigit():
            raise self.error(entry, "not a number")
        value = int(text)
        if value < low or (high is not None and value > high):
            bound = f"{low}..{high}" if high is not None else f">= {low}"
            raise self.error(entry, f"out of range ({bound})")
        return value

    def port(self, entry: ConfEntry) -> int:
        return self.number(entry, 1, MAX_PORT)

    def hosts(self, entry: ConfEntry) -> list[str]:
        """A host, or several separated by ``;`` as the original listen keys allow."""
        hosts = [h.strip() for h in entry.value.split(";") if h.strip()]
        if not hosts or any(" " in h or "\t" in h for h in hosts):
            raise self.error(entry, "not a host name or address")
        return hosts

    def host(self, entry: ConfEntry) -> str:
        hosts = self.hosts(entry)
        if len(hosts) > 1:
            raise self.error(entry, "one address expected")
        return hosts[0]

    def endpoints(self, ip_key: str, port_key: str, result: Imported) -> list[str]:
        """``host:port`` of the pairs ``{ip_key}1``/``{port_key}1``, ... up to the first gap.

        As in the original, a gap ends the list; pairs after it, and a half of a pair,
        are reported as ignored. So is a repeated address: the original opened several
        connections to one server that way, imreactor keeps one link per address.
        """
        found: list[str] = []
        pattern = re.compile(rf"(?:{re.escape(ip_key)}|{re.escape(port_key)})(\d+)\Z")
        entries = {e.key: e for e in self.take_matching(pattern)}
        n = 1
        while f"{ip_key}{n}" in entries and f"{port_key}{n}" in entries:
            ip_entry = entries.pop(f"{ip_key}{n}")
            port_entry = entries.pop(f"{port_key}{n}")
            address = join_host_port(self.host(ip_entry), self.port(port_entry))
            if address in found:
                for entry in (ip_entry, port_entry):
                    result.ignored.append(
                        Ignored(
                            entry.key,
                            entry.value,
                            f"repeats {address}: imreactor keeps one link per address",
                        )
                    )
            else:
                found.append(address)
            n += 1
        for entry in sorted(entries.values(), key=lambda e: e.line):
            result.ignored.append(
                Ignored(
                    entry.key,
                    entry.value,
                    f"the list {ip_key}N/{port_key}N ends at {n - 1} "
                    f"(pair {n} is incomplete), as in the original",
                )
            )
        return found


def join_host_port(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _listen_host(conf: _Conf, entry: ConfEntry, result: Imported) -> str:
    """The first of a ``;``-separated listen list; the rest is reported as ignored."""
    hosts = conf.hosts(entry)
    if len(hosts) > 1:
        result.ignored.append(
            Ignored(
                entry.key,
                ";".join(hosts[1:]),
                f"imreactor listens on one address ({hosts[0]})",
            )
        )
    return hosts[0]


def _ignore(conf: _Conf, result: Imported, pattern: str, reason: str) -> None:
    for entry in conf.take_matching(re.compile(pattern)):
        result.ignored.append(Ignored(entry.key, entry.value, reason))


# -- one importer per role ---------------------------------------------------------------


def _login(conf: _Conf, result: Imported) -> None:
    t = result.table
    # The original listens on a separate address per port; imreactor's login_server uses
    # one address for all three, so the first one given wins and differing ones are listed.
    chosen: str | None = None
    for key in ("ClientListenIP", "HttpListenIP", "MsgServerListenIP"):
        entry = conf.get(key)
        if entry is None:
            continue
        host = _listen_host(conf, entry, result)
        if chosen is None:
            chosen = t["listen_host"] = host
        elif host != chosen:
            result.ignored.append(
                Ignored(key, host, f"login_server listens on one address ({chosen})")
            )
    for key, name in (
        ("ClientPort", "client_port"),
        ("HttpPort", "http_port"),
        ("MsgServerPort", "msg_server_port"),
    ):
        entry = conf.get(key)
        if entry is not None:
            t[name] = conf.port(entry)
    msfs = conf.get("msfs")
    if msfs is not None:
        # The original hands the one msfs URL out as both msfsPrior and msfsBackup.
        t["msfs_prior"] = t["msfs_backup"] = msfs.value
    discovery = conf.get("discovery")
    if discovery is not None:
        t["discovery"] = discovery.value


def _msg(conf: _Conf, result: Imported) -> None:
    t = result.table
    if (entry := conf.get("ListenIP")) is not None:
        t["listen_host"] = _listen_host(conf, entry, result)
    if (entry := conf.get("ListenPort")) is not None:
        t["port"] = conf.port(entry)
    if (entry := conf.get("IpAddr1")) is not None:
        t["ip1"] = t["ip2"] = conf.host(entry)  # no IpAddr2: the original uses IpAddr1
    if (entry := conf.get("IpAddr2")) is not None:
        t["ip2"] = conf.host(entry)
    if (entry := conf.get("MaxConnCnt")) is not None:
        t["max_conn_cnt"] = conf.number(entry, 1)
    for ip_key, port_key, name in (
        ("DBServerIP", "DBServerPort", "db_proxies"),
        ("LoginServerIP", "LoginServerPort", "login_servers"),
        ("RouteServerIP", "RouteServerPort", "route_servers"),
    ):
        found = conf.endpoints(ip_key, port_key, result)
        if found:
            t[name] = found
    _ignore(
        conf,
        result,
        r"ConcurrentDBConnCnt\Z",
        "imreactor keeps one link to each db_proxy_server",
    )
    _ignore(conf, result, r"PushServer(IP|Port)\d+\Z", "imreactor has no push_server")
    _ignore(conf, result, r"FileServer(IP|Port)\d+\Z", "imreactor has no file_server")
    _ignore(conf, result, r"HttpListen(IP|Port)\Z", "imreactor's msg_server has no HTTP API")
    _ignore(
        conf, result, r"aesKey\Z", "message bodies are stored and relayed as the client sent them"
    )


def _route(conf: _Conf, result: Imported) -> None:
    t = result.table
    if (entry := conf.get("ListenIP")) is not None:
        t["listen_host"] = _listen_host(conf, entry, result)
    if (entry := conf.get("ListenMsgPort")) is not None:
        t["port"] = conf.port(entry)


def _dbproxy(conf: _Conf, result: Imported) -> None:
    t = result.table
    if (entry := conf.get("ListenIP")) is not None:
        t["listen_host"] = _listen_host(conf, entry, result)
    if (entry := conf.get("ListenPort")) is not None:
        t["port"] = conf.port(entry)
    if (entry := conf.get("ThreadNum")) is not None:
        t["threads"] = conf.number(entry, 1)
    for list_key, reason in (
        ("DBInstances", "MySQL settings: imreactor stores into SQLite or PostgreSQL"),
        ("CacheInstances", "redis settings: imreactor keeps its counters in the database"),
    ):
        entry = conf.get(list_key)
        if entry is None:
            continue
        result.ignored.append(Ignored(entry.key, entry.value, reason))
        for name in (n.strip() for n in entry.value.split(",")):
            if name:
                _ignore(conf, result, re.escape(name) + r"_\w+\Z", reason)
        if list_key == "DBInstances":
            result.notes.append(
                'Set database = "postgresql://USER@HOST/DBNAME" to use PostgreSQL'
                " (default: SQLite)."
            )
    _ignore(conf, result, r"MsfsSite\Z", "imreactor has no file server")
    _ignore(
        conf, result, r"aesKey\Z", "message bodies are stored and relayed as the client sent them"
    )


def _msfs(conf: _Conf, result: Imported) -> None:
    t = result.table
    if (entry := conf.get("ListenIP")) is not None:
        t["listen_host"] = _listen_host(conf, entry, result)
    if (entry := conf.get("ListenPort")) is not None:
        t["port"] = conf.port(entry)
    if (entry := conf.get("BaseDir")) is not None and entry.value:
        t["store_dir"] = entry.value
    _ignore(
        conf,
        result,
        r"(FileCnt|FilesPerDir)\Z",
        "files are named by their content hash in 256x256 directories; nothing is counted",
    )
    _ignore(
        conf,
        result,
        r"(Get|Post)ThreadCount\Z",
        "one pool of worker_threads serves uploads and downloads",
    )


_IMPORTERS = {
    "login": _login,
    "msg": _msg,
    "route": _route,
    "dbproxy": _dbproxy,
    "msfs": _msfs,
}
