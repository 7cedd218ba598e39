"""msg_server's periodic stats report to login_server, for login_server's dashboard.

Every :data:`REPORT_INTERVAL_S` the msg_server sends ``IMMsgServStats`` (our own
command, docs/protocol.md) on each live login_server link: its connections and users
now, and its counts since start (messages stored, deliveries, errors by kind, and the
buckets of its store, delivery, login and loop-lag histograms). Counts are cumulative,
so login_server gets rates and interval quantiles from the difference of two reports,
and a report that arrives late loses nothing. The link is the one the msg_server
registers on (mutually authenticated TLS where configured): no extra port to open or
to protect. Loop thread only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...net import Timer
from ...pdu.proto import im_server_pb2 as server_pb
from ..metrics import Histogram

if TYPE_CHECKING:
    from .server import MsgServer
    from .stats import MsgStats

#: How often a msg_server reports to login_server (and so the dashboard's resolution).
REPORT_INTERVAL_S = 1.0


def stats_report(stats: MsgStats, connections: int, users_online: int) -> server_pb.IMMsgServStats:
    """The report of ``stats`` now, with the server's current ``connections`` and users."""
    loop = stats.loop
    latencies: list[tuple[str, Histogram]] = [
        ("store", stats.store_latency),
        ("delivery", stats.delivery_latency),
        ("login", stats.login_latency),
        ("loop_lag", stats.metrics.loop_lag),
    ]
    # What went wrong, by kind: refused or broken PDUs (the process's traffic), messages
    # that could not be stored, logins refused because a server they need was down.
    errors = {f"pdu_{kind}": n for kind, n in stats.metrics.traffic.errors.items()}
    errors["message_not_stored"] = int(stats.messages.value("not_stored"))
    errors["login_unavailable"] = int(stats.logins.value("unavailable"))
    return server_pb.IMMsgServStats(
        uptime_ms=int((loop.time() - stats.metrics.started_at) * 1000),
        connections=connections,
        users_online=users_online,
        messages_stored=int(stats.messages.value("stored")),
        deliveries=int(stats.deliveries.value()),
        latencies=[
            server_pb.IMMsgServStats.Latency(name=name, bounds_s=h.bounds, counts=h.counts)
            for name, h in latencies
        ],
        errors=[
            server_pb.IMMsgServStats.ErrorCount(kind=kind, count=n)
            for kind, n in sorted(errors.items())
        ],
    )


class StatsReporter:
    """Sends :func:`stats_report` to every live login_server link each interval."""

    def __init__(self, server: MsgServer, interval_s: float = REPORT_INTERVAL_S) -> None:
        self.server = server
        self.interval_s = interval_s
        self._timer: Timer | None = None

    def start(self) -> None:
        self._timer = self.server.loop.call_every(self.interval_s, self.send)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def send(self) -> None:
        server = self.server
        live = server.login.live
        if not live:
            return
        report = stats_report(server.stats, len(server.clients), len(server.users))
        for link in live:
            link.send(report)
