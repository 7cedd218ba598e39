"""What a load run is asked to do, and what counts against it.

:class:`LoadOptions` says what to run; it raises nothing until :meth:`LoadOptions.check`,
which refuses (ValueError) options that cannot make a run. :data:`ERROR_KINDS` are the
counters a run keeps: any of them non-zero fails the run.

The msg_server's per-connection rate limit (``msg_rate_per_s``, 50/s by
default) slows each connection to that rate (it pauses reading; nothing is
dropped): raise it for benchmarks that measure the servers, not the limit.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ...net.connection import parse_address
from ..tls import client_context

DEFAULT_PASSWORD = "imreactor"
DEFAULT_DURATION_S = 10.0

#: Error counters; any of them non-zero fails the run.
ERROR_KINDS = (
    "refused_logins",  # the server said no (e.g. 6: wrong password, unknown user)
    "login_failures",  # could not reach a server, or no answer in time
    "group_failures",  # the group was not created, or not with exactly the users asked
    "timeouts",  # a message got no IMMsgDataAck within ack_timeout_s
    "unacked_on_close",  # the sender's connection closed before the ack
    "bad_acks",  # an ack for the wrong user/session, msg_id 0, or a corrupt echo
    "disconnects",  # a logged-in connection closed during the run
    "kicks",  # IMKickUser received
    "losses",  # an acked message missing at a connection that should have it
    "duplicates",  # extra copies of a message at one connection
    "reorders",  # a message arrived after a later msg_id of its conversation
    "wrong_ids",  # delivered with another msg_id than the sender was acked with
    "misdelivered",  # arrived where it was not sent, or with the wrong sender/recipient
    "id_conflicts",  # two messages of one conversation acked with the same msg_id
    "id_gaps",  # msg_ids missing inside a conversation whose messages were all acked
    "process_failures",  # a load process of a --processes run died or reported nothing
)


@dataclass
class LoadOptions:
    """What to run. ``pairs`` defaults to ``users // 2``; without ``duration_s`` and
    ``count`` a run lasts ``DEFAULT_DURATION_S``. Raises nothing; :meth:`check` does."""

    login_url: str = "http://127.0.0.1:8080"
    msg_server: str | None = None  # "host:port": skip login_server
    msg_servers: list[str] | None = None  # ["host:port", ...]: user i to entry i mod n
    echo: str | None = None  # "host:port": reference run against a PDU echo server
    users: int = 200  # ignored with group_size
    pairs: int | None = None
    group_size: int | None = None  # M: one group of load0..load<M-1>, no pairs
    senders: int | None = None  # group members that send (the first ones; default 1)
    duplex: bool = False
    devices: int = 1  # 2: every user also logs in as a mobile client
    in_flight: int = 1
    rate: float | None = None
    duration_s: float | None = None
    count: int | None = None
    size: int = 64
    password: str = DEFAULT_PASSWORD
    user_prefix: str = "load"
    first_user: int = 0  # the users are <prefix><first_user>.. (even: pairs stay pairs)
    source_host: str | None = None  # bind every connection's local end to this address
    login_concurrency: int = 64
    login_retry_s: float = 10.0
    login_timeout_s: float = 10.0
    ack_timeout_s: float = 10.0
    drain_s: float = 5.0
    receipts: bool = True
    reconnect: bool = False  # a dropped connection logs in again and catches up (1:1 runs)
    reconnect_jitter_s: float = 5.0  # each reconnect waits a random 0..this first
    tls: bool = False  # msg_server's TLS port ("tlsPort"; --msg-server: a TLS port)
    ws: bool = False  # WebSocket to msg_server ("wsURL", with tls "wssURL"; --msg-server: ws_port)
    ca_file: str | None = None  # CA to verify servers with (None: the system's)

    @property
    def pair_count(self) -> int:
        """Sending pairs (0 in a group run)."""
        if self.group_size is not None:
            return 0
        return self.users // 2 if self.pairs is None else self.pairs

    @property
    def user_count(self) -> int:
        """Users logged in: ``group_size`` in a group run, else ``users``."""
        return self.users if self.group_size is None else self.group_size

    @property
    def group_senders(self) -> int:
        """Members that send in a group run."""
        return 1 if self.senders is None else self.senders

    def check(self) -> None:
        """Raise ValueError for options that cannot make a run."""
        if self.ca_file is not None:
            client_context(self.ca_file)  # ValueError if it cannot be read
        if self.echo is not None and (self.tls or self.ca_file is not None):
            raise ValueError("--echo speaks plain TCP, not --tls")
        if self.echo is not None and self.ws:
            raise ValueError("--echo speaks plain TCP, not --ws")
        if self.group_size is not None:
            if self.group_size < 2:
                raise ValueError("--group-size must be at least 2")
            if self.pairs is not None or self.duplex:
                raise ValueError("--pairs and --duplex are for 1:1 runs, not --group-size")
            if self.echo is not None:
                raise ValueError("--echo has no groups")
            if not 1 <= self.group_senders <= self.group_size:
                raise ValueError(f"--senders must be in 1..{self.group_size} (group size)")
        else:
            if self.senders is not None:
                raise ValueError("--senders needs --group-size (1:1 runs use --pairs)")
            if self.users < 2:
                raise ValueError("--users must be at least 2")
            if not 1 <= self.pair_count <= self.users // 2:
                raise ValueError(f"--pairs must be in 1..{self.users // 2} (users // 2)")
        if self.msg_servers is not None:
            if not self.msg_servers:
                raise ValueError("--msg-servers needs at least one host:port")
            if self.msg_server is not None or self.echo is not None:
                raise ValueError("--msg-servers excludes --msg-server and --echo")
            for entry in self.msg_servers:
                parse_address(entry, 8000)
        if self.devices not in (1, 2):
            raise ValueError("--devices must be 1 or 2")
        if not 1 <= self.in_flight <= 60000:
            raise ValueError("--in-flight must be in 1..60000")
        if self.rate is not None and self.rate <= 0:
            raise ValueError("--rate must be positive")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ValueError("--duration must be positive")
        if self.count is not None and self.count < 1:
            raise ValueError("--count must be at least 1")
        if self.login_concurrency < 1:
            raise ValueError("--login-concurrency must be at least 1")
        if self.reconnect and (self.group_size is not None or self.echo is not None):
            raise ValueError("--reconnect is for 1:1 runs (no --group-size, no --echo)")
        if self.reconnect_jitter_s < 0:
            raise ValueError("--reconnect-jitter must not be negative")
        if self.source_host is not None:
            try:
                ipaddress.ip_address(self.source_host)
            except ValueError:
                raise ValueError(
                    f"--source-host must be an IP address, not {self.source_host!r}"
                ) from None
        if self.first_user < 0 or self.first_user % 2:
            raise ValueError("first_user must be even and not negative")
        if self.group_size is not None and self.first_user:
            raise ValueError("a group run starts at the first user")

    def user_names(self) -> list[str]:
        first = self.first_user
        return [f"{self.user_prefix}{first + i}" for i in range(self.user_count)]
