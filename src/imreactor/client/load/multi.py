"""``imreactor load --processes N``: one 1:1 load run spread over N processes.

One process may hold only so many connections (here a hard limit of 20,000 open
files), and one loop uses one core; a run of 50,000 users needs several. The
parent splits the users into N contiguous slices of whole pairs (slice k starts
at an even user number, so both users of every pair are in one process and
each process verifies its own pairs completely) and the pairs, the rate and the
count in proportion; it starts one child per slice (``python -m
imreactor.client.load.child``), each an ordinary :class:`~.driver.LoadRun` on its
own loop. With ``--msg-servers``, user i still goes to entry i mod n (i counts
across the whole run), so each pair is split over two servers as in one process.

Each child binds its connections to its own source address (``127.0.1.<k+1>``
when every target is an IPv4 loopback address, unless ``source_host`` says
otherwise): a source address has its own ephemeral ports towards each server.

Protocol between parent and child (one JSON object per line): the parent writes
the child's :class:`~.options.LoadOptions` on its stdin; the child logs in and
writes ``{"ready": {...}}``; once every child is ready (or gone), the parent
writes ``go`` to each, so that every child sends while all users are online;
at the end the child writes ``{"result": ...}``: its report, its raw ack and
delivery latencies and its phase times on ``time.monotonic`` (one clock for
every process of the machine), and keeps its connections open until the parent,
once every result is in, writes ``bye``. The two barriers give the caller two
moments with every user online (``on_ready``: before any message; ``on_done``:
after every delivery) to measure the servers at. The parent merges: counters add up, phase spans
run from the earliest start to the latest end over all children, percentiles
come from the merged samples. A child that dies or reports nothing counts as
``process_failures``, which fails the run.

SIGINT to the parent is passed on to every child (they stop sending and still
verify); the children run in their own sessions so that a terminal's Ctrl-C
reaches them only this way, once.
"""

from __future__ import annotations

import ipaddress
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from queue import Queue
from typing import IO, Any
from urllib.parse import urlsplit

from ...net.connection import parse_address
from .options import ERROR_KINDS, LoadOptions
from .report import MAX_PROBLEMS, Latency, LoadReport

MAX_PROCESSES = 64


def split(options: LoadOptions, processes: int) -> list[LoadOptions]:
    """The options of each of ``processes`` children (see the module docstring).

    Raises ValueError for a run that cannot be split: a group or echo run, fewer
    pairs (or messages, with ``count``) than processes, more than :data:`MAX_PROCESSES`.
    """
    options.check()
    if not 1 <= processes <= MAX_PROCESSES:
        raise ValueError(f"--processes must be in 1..{MAX_PROCESSES}")
    if options.group_size is not None or options.echo is not None:
        raise ValueError("--processes is for 1:1 runs (no --group-size, no --echo)")
    pairs = options.pair_count
    if pairs < processes:
        raise ValueError(f"--pairs ({pairs}) must be at least --processes ({processes})")
    if options.count is not None and options.count < processes:
        raise ValueError(f"--count ({options.count}) must be at least --processes")
    slots = options.users // 2
    sources = _sources(options, processes)
    shares: list[LoadOptions] = []
    first = options.first_user
    for k in range(processes):
        k_slots = _part(slots, processes, k)
        k_pairs = _part(pairs, processes, k)
        users = 2 * k_slots + (options.users % 2 if k == processes - 1 else 0)
        shares.append(
            replace(
                options,
                first_user=first,
                users=users,
                pairs=k_pairs,
                rate=None if options.rate is None else options.rate * k_pairs / pairs,
                count=None if options.count is None else _part(options.count, processes, k),
                source_host=sources[k],
            )
        )
        first += users
    return shares


def _part(total: int, parts: int, k: int) -> int:
    """Share ``k`` of ``total`` split into ``parts`` as evenly as whole numbers go."""
    return total // parts + (1 if k < total % parts else 0)


def _sources(options: LoadOptions, processes: int) -> list[str | None]:
    """Each child's source address: the one given, else one of 127.0.1.0/24 per child
    when every target is IPv4 loopback, else none (the OS picks)."""
    if options.source_host is not None:
        return [options.source_host] * processes
    if options.msg_servers is not None:
        hosts = [parse_address(entry, 8000)[0] for entry in options.msg_servers]
    elif options.msg_server is not None:
        hosts = [parse_address(options.msg_server, 8000)[0]]
    else:
        hosts = [urlsplit(options.login_url).hostname or "127.0.0.1"]
    try:
        loopback = all(ipaddress.IPv4Address(h).is_loopback for h in hosts)
    except ValueError:
        loopback = False
    if not loopback:
        return [None] * processes
    return [f"127.0.1.{k + 1}" for k in range(processes)]


# -- the parent --------------------------------------------------------------------------------


@dataclass
class _Child:
    index: int
    options: LoadOptions
    proc: subprocess.Popen[str]
    ready: bool = False
    gone: bool = False
    result: dict[str, Any] | None = None
    lines: list[str] = field(default_factory=list)


def _read(child: _Child, events: Queue[tuple[_Child, dict[str, Any] | None]]) -> None:
    """Reader thread: each JSON line of ``child`` as an event; None once it exits."""
    assert child.proc.stdout is not None
    for line in child.proc.stdout:
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            child.lines.append(line.rstrip())  # not ours: kept for the problem report
            continue
        if isinstance(obj, dict):
            events.put((child, obj))
    child.proc.wait()
    events.put((child, None))


def run_processes(
    options: LoadOptions,
    processes: int,
    *,
    progress: IO[str] | None = None,
    on_ready: Callable[[], None] | None = None,
    on_done: Callable[[], None] | None = None,
) -> LoadReport:
    """Run ``options`` split over ``processes`` children; the merged report.

    ``on_ready()`` runs once every child has logged in (before ``go``), ``on_done()``
    once every child has reported (before ``bye``). Raises ValueError as
    :func:`split` does. Blocks until every child is done.
    """
    shares = split(options, processes)
    events: Queue[tuple[_Child, dict[str, Any] | None]] = Queue()
    children: list[_Child] = []
    t0 = time.monotonic()
    for k, share in enumerate(shares):
        proc = subprocess.Popen(
            [sys.executable, "-m", "imreactor.client.load.child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        child = _Child(k, share, proc)
        children.append(child)
        _tell(child, json.dumps(asdict(share)))
        threading.Thread(target=_read, args=(child, events), daemon=True).start()
    previous = signal.getsignal(signal.SIGINT)
    main = threading.current_thread() is threading.main_thread()
    if main:
        signal.signal(signal.SIGINT, lambda sig, frame: _interrupt(children))
    try:
        _wait(children, events, t0, progress, on_ready, on_done)
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)
    return merge(options, children)


def _tell(child: _Child, line: str) -> None:
    """Write one line to the child; a child already gone is noticed by its reader."""
    assert child.proc.stdin is not None
    try:
        child.proc.stdin.write(line + "\n")
        child.proc.stdin.flush()
    except (BrokenPipeError, OSError):
        pass


def _interrupt(children: list[_Child]) -> None:
    for child in children:
        if child.proc.poll() is None:
            child.proc.send_signal(signal.SIGINT)


def _wait(
    children: list[_Child],
    events: Queue[tuple[_Child, dict[str, Any] | None]],
    t0: float,
    progress: IO[str] | None,
    on_ready: Callable[[], None] | None,
    on_done: Callable[[], None] | None,
) -> None:
    """Collect readiness, send ``go`` once all are ready or gone; collect results,
    send ``bye`` once all have reported or gone."""
    went = said_bye = False
    while not all(c.gone for c in children):
        child, obj = events.get()
        if obj is None:
            child.gone = True
        elif "ready" in obj:
            child.ready = True
        elif "result" in obj:
            child.result = obj["result"]
        if went and not said_bye and all(c.result is not None or c.gone for c in children):
            said_bye = True
            if on_done is not None:
                on_done()
            for c in children:
                _tell(c, "bye")
        if not went and all(c.ready or c.gone for c in children):
            went = True
            if on_ready is not None:
                on_ready()
            if progress is not None:
                ready = sum(c.ready for c in children)
                progress.write(
                    f"load: {ready} of {len(children)} processes logged in after "
                    f"{time.monotonic() - t0:.1f} s; sending\n"
                )
                progress.flush()
            for c in children:
                if not c.gone:
                    _tell(c, "go")


def merge(options: LoadOptions, children: list[_Child]) -> LoadReport:
    """One report from the children's results (module docstring)."""
    errors = dict.fromkeys(ERROR_KINDS, 0)
    info: dict[str, int] = {}
    problems: list[str] = []
    totals: dict[str, float] = {}
    acks: list[float] = []
    deliveries: list[float] = []
    stamps: dict[str, list[float]] = {}
    summed = (
        "connections",
        "users",
        "senders",
        "logins_ok",
        "logins_refused",
        "logins_failed",
        "login_retries",
        "sent",
        "acked",
        "expected_deliveries",
        "deliveries",
        "loader_cpu_s",
        "reconnects",
        "caught_up",
    )
    back_max_s = 0.0
    for child in children:
        result = child.result
        if result is None:
            errors["process_failures"] += 1
            tail = "; ".join(child.lines[-3:]) or "no output"
            problems.append(
                f"process_failures: process {child.index} (users from "
                f"{child.options.first_user}) exited {child.proc.returncode}: {tail}"
            )
            continue
        report = result["report"]
        back_max_s = max(back_max_s, report["back_max_s"])
        for key in summed:
            totals[key] = totals.get(key, 0) + report[key]
        for kind, n in report["errors"].items():
            errors[kind] = errors.get(kind, 0) + n
        for kind, n in report["info"].items():
            info[kind] = info.get(kind, 0) + n
        problems.extend(f"process {child.index}: {p}" for p in report["problems"])
        acks.extend(result["ack_s"])
        deliveries.extend(result["delivery_s"])
        for key in ("t_start", "t_logins_done", "t_send_start", "t_send_end", "t_last_delivery"):
            if result[key]:
                stamps.setdefault(key, []).append(result[key])

    def span(start: str, end: str) -> float:
        if start not in stamps or end not in stamps:
            return 0.0
        return round(max(max(stamps[end]) - min(stamps[start]), 0.0), 3)

    login_s = max(span("t_start", "t_logins_done"), 1e-9)
    send_s = span("t_send_start", "t_send_end")
    delivery_s = span("t_send_start", "t_last_delivery")
    acked = int(totals.get("acked", 0))
    delivered = int(totals.get("deliveries", 0))
    logins_ok = int(totals.get("logins_ok", 0))
    target = options.login_url
    if options.msg_servers is not None:
        target = f"msg_servers {','.join(options.msg_servers)} (round-robin)"
    elif options.msg_server is not None:
        target = f"msg_server {options.msg_server}"
    return LoadReport(
        ok=acked > 0 and not any(errors.values()),
        mode="im",
        target=f"{target}, from {len(children)} processes",
        connections=int(totals.get("connections", 0)),
        users=int(totals.get("users", 0)),
        group_size=0,
        group_id=0,
        senders=int(totals.get("senders", 0)),
        in_flight=options.in_flight,
        rate=options.rate,
        logins_ok=logins_ok,
        logins_refused=int(totals.get("logins_refused", 0)),
        logins_failed=int(totals.get("logins_failed", 0)),
        login_retries=int(totals.get("login_retries", 0)),
        login_s=round(login_s, 3),
        logins_per_s=round(logins_ok / login_s, 1),
        sent=int(totals.get("sent", 0)),
        acked=acked,
        send_s=send_s,
        msgs_per_s=round(acked / send_s, 1) if send_s > 0 else 0.0,
        expected_deliveries=int(totals.get("expected_deliveries", 0)),
        deliveries=delivered,
        delivery_s=delivery_s,
        deliveries_per_s=round(delivered / delivery_s, 1) if delivery_s > 0 else 0.0,
        ack_latency=Latency.of(acks),
        delivery_latency=Latency.of(deliveries),
        errors=errors,
        info=info,
        problems=problems[:MAX_PROBLEMS],
        loader_cpu_s=round(totals.get("loader_cpu_s", 0.0), 2),
        reconnects=int(totals.get("reconnects", 0)),
        caught_up=int(totals.get("caught_up", 0)),
        back_max_s=back_max_s,
    )
