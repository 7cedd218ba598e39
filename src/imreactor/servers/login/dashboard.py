"""login_server's dashboard: every msg_server's load and health, as JSON and as a page.

Where the numbers come from: the load (sessions / max) is what login_server already
balances on (``IMMsgServInfo``, then ``IMUserCntUpdate``); the rest comes from
``IMMsgServStats``, which each msg_server sends on its registration link every second
(:mod:`..msg.report`). A report holds cumulative counts, so the figures shown for a
msg_server are those of the interval between its last two reports: rates (messages
stored, deliveries and errors per second) from the differences of the counts, and p99
latencies from the differences of the histogram buckets (:func:`interval_quantile`).
The cluster's p99 comes from the msg_servers' bucket differences added together (the
quantile of the whole cluster's observations, not an average of quantiles).

A report that is malformed (histogram counts that do not fit their bounds, counts that
go backwards, names that are not names) is refused with a logged warning and changes
nothing; the link and the msg_server's registration are unaffected. A msg_server whose
link closes is shown as down for :data:`GONE_KEPT_S`, then left out.

Routes: ``/dashboard/data`` (the JSON, documented in docs/servers.md, "Dashboard"),
``/dashboard/`` (the page: :data:`DASHBOARD_DIR`, static files polling that JSON) and
``/dashboard`` (a redirect to it). Loop thread only.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...http import JSON, TEXT, Reply, Request, Response, Router
from ...pdu.imconn import ImConnection
from ...pdu.proto import im_server_pb2 as server_pb
from ...pdu.registry import ids_of
from ...static import StaticFiles
from ..metrics import bucket_quantile
from ..msg.report import REPORT_INTERVAL_S

if TYPE_CHECKING:
    from .server import MsgServerEntry, MsgServerRegistry

log = logging.getLogger(__name__)

#: The browser files shipped with the package (the page, and vendored libraries).
WEB_ROOT = Path(__file__).resolve().parents[2] / "web"
DASHBOARD_DIR = WEB_ROOT / "dashboard"
#: The page's data; the page polls it.
DATA_PATH = "/dashboard/data"
#: The quantile shown for each latency.
QUANTILE = 0.99
#: A msg_server whose last report is older than this is shown as stale (no rates).
STALE_AFTER_S = 3 * REPORT_INTERVAL_S
#: How long a msg_server whose link closed is still listed, as down.
GONE_KEPT_S = 60.0
#: Bounds on one report, so that a broken peer cannot make login_server keep much.
MAX_LATENCIES = 16
MAX_BOUNDS = 64
MAX_ERROR_KINDS = 64
_NAME = re.compile(r"[a-z][a-z0-9_]{0,47}\Z")

Buckets = tuple[tuple[float, ...], tuple[int, ...]]
"""A histogram: its upper bounds and the count in each bucket (one more, for +Inf)."""


class MalformedReport(ValueError):
    """An ``IMMsgServStats`` that breaks its contract (the message says how)."""


@dataclass(frozen=True)
class Snapshot:
    """One checked report: a msg_server's counts since it started."""

    uptime_s: float
    connections: int
    users_online: int
    messages_stored: int
    deliveries: int
    latencies: Mapping[str, Buckets]
    errors: Mapping[str, int]

    @classmethod
    def parse(cls, msg: server_pb.IMMsgServStats) -> Snapshot:
        """The snapshot of ``msg``; :class:`MalformedReport` if it breaks its contract."""
        if len(msg.latencies) > MAX_LATENCIES or len(msg.errors) > MAX_ERROR_KINDS:
            raise MalformedReport(
                f"{len(msg.latencies)} histograms and {len(msg.errors)} error kinds"
                f" (at most {MAX_LATENCIES} and {MAX_ERROR_KINDS})"
            )
        latencies: dict[str, Buckets] = {}
        for latency in msg.latencies:
            name = _checked_name(latency.name, "histogram", latencies)
            bounds = tuple(latency.bounds_s)
            counts = tuple(latency.counts)
            if not 1 <= len(bounds) <= MAX_BOUNDS:
                raise MalformedReport(f"histogram {name}: {len(bounds)} bounds (1..{MAX_BOUNDS})")
            if not all(math.isfinite(b) and b > 0 for b in bounds) or any(
                a >= b for a, b in itertools.pairwise(bounds)
            ):
                raise MalformedReport(f"histogram {name}: bounds not positive and increasing")
            if len(counts) != len(bounds) + 1:
                raise MalformedReport(
                    f"histogram {name}: {len(counts)} counts for {len(bounds)} bounds"
                    f" (want {len(bounds) + 1})"
                )
            latencies[name] = (bounds, counts)
        errors: dict[str, int] = {}
        for error in msg.errors:
            errors[_checked_name(error.kind, "error kind", errors)] = error.count
        return cls(
            uptime_s=msg.uptime_ms / 1000,
            connections=msg.connections,
            users_online=msg.users_online,
            messages_stored=msg.messages_stored,
            deliveries=msg.deliveries,
            latencies=latencies,
            errors=errors,
        )


def _checked_name(name: str, what: str, seen: Mapping[str, object]) -> str:
    if not _NAME.match(name):
        raise MalformedReport(f"{what} name {name[:60]!r} is not [a-z][a-z0-9_]*, 1..48 long")
    if name in seen:
        raise MalformedReport(f"{what} {name} twice")
    return name


@dataclass(frozen=True)
class Interval:
    """What happened on one msg_server between two of its reports."""

    seconds: float
    messages: int
    deliveries: int
    errors: Mapping[str, int]  # by kind, the kinds that occurred
    latencies: Mapping[str, Buckets]  # the observations of the interval, per bucket

    @property
    def messages_per_s(self) -> float:
        return self.messages / self.seconds

    @property
    def deliveries_per_s(self) -> float:
        return self.deliveries / self.seconds

    @property
    def errors_per_s(self) -> float:
        return sum(self.errors.values()) / self.seconds


def interval_between(before: Snapshot, after: Snapshot) -> Interval:
    """The interval from ``before`` to ``after``, two reports of one msg_server.

    Raises :class:`MalformedReport` if ``after`` is not later or a count went
    backwards (counts since start only grow). A histogram whose bounds changed, or
    that only one of them has, is left out of the interval.
    """
    seconds = after.uptime_s - before.uptime_s
    if seconds <= 0:
        raise MalformedReport(f"uptime {after.uptime_s:g} s, not after {before.uptime_s:g} s")
    messages = after.messages_stored - before.messages_stored
    deliveries = after.deliveries - before.deliveries
    if messages < 0 or deliveries < 0:
        raise MalformedReport("message or delivery counts went backwards")
    errors: dict[str, int] = {}
    for kind, n in after.errors.items():
        delta = n - before.errors.get(kind, 0)
        if delta < 0:
            raise MalformedReport(f"error count {kind} went backwards")
        if delta:
            errors[kind] = delta
    latencies: dict[str, Buckets] = {}
    for name, (bounds, counts) in after.latencies.items():
        earlier = before.latencies.get(name)
        if earlier is None or earlier[0] != bounds:
            continue
        deltas = tuple(b - a for a, b in zip(earlier[1], counts, strict=True))
        if any(d < 0 for d in deltas):
            raise MalformedReport(f"histogram {name} went backwards")
        latencies[name] = (bounds, deltas)
    return Interval(seconds, messages, deliveries, errors, latencies)


def interval_quantile(buckets: Buckets, q: float = QUANTILE) -> dict[str, Any] | None:
    """Quantile ``q`` of an interval's bucket counts, as the JSON shows it: ``{"p99_ms",
    "count", "over"}``, or None with no observations.

    ``p99_ms`` is the upper bound of the bucket holding the quantile (exact to within
    one bucket); past the last bound it is that bound and ``over`` is true ("at least").
    """
    bounds, counts = buckets
    count = sum(counts)
    if not count:
        return None
    value = bucket_quantile(bounds, counts, q)
    over = math.isinf(value)
    return {"p99_ms": _ms(bounds[-1] if over else value), "count": count, "over": over}


def merged(histograms: Iterable[Buckets]) -> dict[tuple[float, ...], list[int]]:
    """Bucket counts added together, per set of bounds (equal bounds add up)."""
    out: dict[tuple[float, ...], list[int]] = {}
    for bounds, counts in histograms:
        total = out.setdefault(bounds, [0] * len(counts))
        for i, n in enumerate(counts):
            total[i] += n
    return out


def cluster_figures(intervals: Iterable[Interval]) -> dict[str, Any]:
    """The cluster's rates (sums) and latencies (quantiles of the added buckets) over
    the msg_servers' latest intervals."""
    intervals = list(intervals)
    names = sorted({name for i in intervals for name in i.latencies})
    latency: dict[str, Any] = {}
    for name in names:
        by_bounds = merged(i.latencies[name] for i in intervals if name in i.latencies)
        # Servers of one version share their bounds; if they differ, the set holding
        # the most observations speaks for the cluster rather than adding unlike buckets.
        bounds, counts = max(by_bounds.items(), key=lambda item: sum(item[1]))
        latency[name] = interval_quantile((bounds, tuple(counts)))
    return {
        "messages_per_s": _rate(sum(i.messages_per_s for i in intervals)),
        "deliveries_per_s": _rate(sum(i.deliveries_per_s for i in intervals)),
        "errors_per_s": _rate(sum(i.errors_per_s for i in intervals)),
        "latency": latency,
    }


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _rate(per_s: float) -> float:
    return round(per_s, 3)


class _Tracked:
    """What the dashboard keeps of one msg_server link."""

    __slots__ = ("interval", "received_at", "snapshot")

    def __init__(self, snapshot: Snapshot, received_at: float) -> None:
        self.snapshot = snapshot
        self.received_at = received_at
        self.interval: Interval | None = None


class Dashboard:
    """The msg_servers' reports, the JSON built from them, and the dashboard's routes."""

    def __init__(self, registry: MsgServerRegistry, clock: Callable[[], float]) -> None:
        """``clock()``: the loop's monotonic time (``loop.time``)."""
        self.registry = registry
        self.clock = clock
        self._tracked: dict[ImConnection, _Tracked] = {}
        self._gone: dict[str, tuple[str, float]] = {}  # id → (name, when it went)

    def routes(self, router: Router) -> None:
        """Add ``/dashboard/data``, ``/dashboard/`` and ``/dashboard`` to ``router``."""
        router.add(DATA_PATH, self._http_data)
        router.add("/dashboard/", StaticFiles(DASHBOARD_DIR, "/dashboard/"))
        router.add("/dashboard", _redirect_to_page)

    # -- reports --------------------------------------------------------------------------

    def on_stats(self, link: ImConnection, msg: server_pb.IMMsgServStats, seq: int) -> None:
        """A report arrived on ``link``: keep it, or refuse it (logged) if malformed."""
        now = self.clock()
        try:
            snapshot = Snapshot.parse(msg)
            tracked = self._tracked.get(link)
            interval = None if tracked is None else interval_between(tracked.snapshot, snapshot)
        except MalformedReport as exc:
            link.bad_pdu(*ids_of(msg), seq, f"malformed IMMsgServStats: {exc}")
            return
        if tracked is None:
            self._tracked[link] = _Tracked(snapshot, now)
            return
        tracked.snapshot, tracked.received_at, tracked.interval = snapshot, now, interval

    def forget(self, link: ImConnection) -> None:
        """``link`` closed: its msg_server is down (call before the registry forgets it)."""
        self._tracked.pop(link, None)
        entry = self.registry.get(link)
        if entry is not None:
            self._gone[_server_id(entry)] = (entry.host_name, self.clock())

    # -- the JSON -------------------------------------------------------------------------

    def data(self) -> dict[str, Any]:
        """The document ``/dashboard/data`` answers (shape: docs/servers.md, "Dashboard")."""
        now = self.clock()
        servers: list[dict[str, Any]] = []
        intervals: list[Interval] = []
        up_ids: set[str] = set()
        for link, entry in self.registry.items():
            up_ids.add(_server_id(entry))
            tracked = self._tracked.get(link)
            row = self._row(entry, tracked, now)
            servers.append(row)
            if tracked is not None and tracked.interval is not None and not row["stale"]:
                intervals.append(tracked.interval)
        for server_id, (name, gone_at) in list(self._gone.items()):
            if now - gone_at > GONE_KEPT_S or server_id in up_ids:
                del self._gone[server_id]
                continue
            servers.append(
                {"id": server_id, "name": name, "up": False, "down_s": round(now - gone_at, 1)}
            )
        servers.sort(key=lambda s: (s["name"], s["id"]))
        up = [s for s in servers if s["up"]]
        cluster = {
            "msg_servers": len(up),
            "msg_servers_down": len(servers) - len(up),
            "sessions": sum(s["sessions"] for s in up),
            "max_sessions": sum(s["max_sessions"] for s in up),
            "users_online": sum(s["users_online"] or 0 for s in up),
            **cluster_figures(intervals),
        }
        return {
            "time": round(time.time(), 3),
            "report_interval_s": REPORT_INTERVAL_S,
            "quantile": QUANTILE,
            "cluster": cluster,
            "msg_servers": servers,
        }

    def _row(self, entry: MsgServerEntry, tracked: _Tracked | None, now: float) -> dict[str, Any]:
        row: dict[str, Any] = {
            "id": _server_id(entry),
            "name": entry.host_name,
            "up": True,
            "sessions": entry.cur_conn_cnt,
            "max_sessions": entry.max_conn_cnt,
            "load": round(entry.cur_conn_cnt / entry.max_conn_cnt, 4) if entry.max_conn_cnt else 1,
            "stale": True,  # until a report says otherwise
            "reported_s_ago": None,
            "uptime_s": None,
            "connections": None,
            "users_online": None,
            "messages_per_s": None,
            "deliveries_per_s": None,
            "errors_per_s": None,
            "errors": {},
            "errors_total": {},
            "latency": {},
        }
        if tracked is None:
            return row
        snapshot = tracked.snapshot
        age = now - tracked.received_at
        row.update(
            stale=age > STALE_AFTER_S,
            reported_s_ago=round(age, 1),
            uptime_s=round(snapshot.uptime_s, 1),
            connections=snapshot.connections,
            users_online=snapshot.users_online,
            errors_total=dict(snapshot.errors),
        )
        interval = tracked.interval
        if interval is not None and not row["stale"]:
            row.update(
                messages_per_s=_rate(interval.messages_per_s),
                deliveries_per_s=_rate(interval.deliveries_per_s),
                errors_per_s=_rate(interval.errors_per_s),
                errors=dict(interval.errors),
                latency={
                    name: interval_quantile(buckets)
                    for name, buckets in sorted(interval.latencies.items())
                },
            )
        return row

    # -- HTTP -----------------------------------------------------------------------------

    def _http_data(self, request: Request) -> Response | Reply:
        if request.method not in ("GET", "HEAD"):
            log.warning("dashboard: %s %s refused (only GET and HEAD)", request.method, DATA_PATH)
            return Reply(
                HTTPStatus.METHOD_NOT_ALLOWED, TEXT, b"only GET and HEAD\n", {"Allow": "GET, HEAD"}
            )
        if request.path != DATA_PATH:
            return HTTPStatus.NOT_FOUND, TEXT, b"not found\n"
        if request.query:
            log.warning(
                "dashboard: %s?%.100s refused (it takes no query)", DATA_PATH, request.query
            )
            return HTTPStatus.BAD_REQUEST, TEXT, b"/dashboard/data takes no query\n"
        body = json.dumps(self.data(), allow_nan=False).encode()
        return Reply(
            HTTPStatus.OK,
            JSON,
            body,
            {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
        )


def _server_id(entry: MsgServerEntry) -> str:
    host = f"[{entry.ip1}]" if ":" in entry.ip1 else entry.ip1
    return f"{host}:{entry.port}"


def _redirect_to_page(request: Request) -> Response | Reply:
    if request.path != "/dashboard":
        return HTTPStatus.NOT_FOUND, TEXT, b"not found\n"
    # The page's own files are named relative to /dashboard/.
    return Reply(HTTPStatus.PERMANENT_REDIRECT, TEXT, b"/dashboard/\n", {"Location": "/dashboard/"})
