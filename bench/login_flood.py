"""Login flood benchmark: how much a flood of bad logins from one address slows others'.

It starts a real suite (SQLite, default scrypt cost) twice in the same run: once as
configured by default (failed logins throttled per account and per address) and once
with throttling turned off, so the ratio shows what throttling buys on this machine.
In each suite:

1. **quiet**: a measuring client on loopback address 127.0.0.2 logs ``--cold`` users in
   for the first time (each a full scrypt check) and then ``--returning`` logins of
   users it has logged in before (answered from db_proxy's credential cache), one at
   a time, each on a fresh connection, and records each login's latency.
2. **flood**: a separate process on 127.0.0.3 runs ``--threads`` (16) threads that
   each log in over and over with wrong passwords for existing users and with unknown
   names, each attempt on a fresh connection. After ``--settle`` seconds the measuring
   client repeats step 1 with other users.

Printed per suite: the measuring client's mean and p50/p99 cold and returning login
latency, quiet and under the flood, the ratio flood/quiet (the goal: at most 2x with
throttling), and the flood's attempts/s. The flooder, the measuring client and every
server share this machine's cores.

usage: .venv/bin/python bench/login_flood.py [--cold 10] [--returning 50] [--threads 16]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from imreactor.accounts import create_users
from imreactor.pdu.header import HEADER_LEN, parse_header
from imreactor.pdu.imconn import encode_message
from imreactor.pdu.password import password_digest
from imreactor.pdu.proto import im_base_define_pb2 as base
from imreactor.pdu.proto import im_login_pb2 as login_pb
from imreactor.pdu.registry import ids_of
from imreactor.servers.suite import SuiteLayout, stop_children

sys.path.insert(0, str(Path(__file__).resolve().parent))
from im_e2e import free_ports

PASSWORD = "imreactor"
MEASURE_HOST = "127.0.0.2"
FLOOD_HOST = "127.0.0.3"
#: msg_server keys that turn throttling off (a failure count no flood reaches).
NO_THROTTLE = {
    "throttle_account_free": 10**9,
    "throttle_account_lockout": 10**9 + 1,
    "throttle_address_free": 10**9,
    "throttle_address_lockout": 10**9 + 1,
}
#: The command the answer to a login travels under.
LOGIN_RES = ids_of(login_pb.IMLoginRes)[1]
#: Not refused because msg_server is still linking to db_proxy (login result codes 3-5).
LINKING = (3, 4, 5)


def _read_exact(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed by the server")
        data += chunk
    return bytes(data)


def login_once(
    port: int, source: str, name: str, digest: str, timeout_s: float = 30.0
) -> tuple[int, float]:
    """One login on a fresh connection from ``source``: (result code, seconds)."""
    start = time.perf_counter()
    with socket.create_connection(
        ("127.0.0.1", port), timeout=timeout_s, source_address=(source, 0)
    ) as sock:
        req = login_pb.IMLoginReq(
            user_name=name,
            password=digest,
            online_status=base.USER_STATUS_ONLINE,
            client_type=base.CLIENT_TYPE_WINDOWS,
            client_version="login-flood",
        )
        sock.sendall(encode_message(req, seq=1))
        while True:
            header = parse_header(_read_exact(sock, HEADER_LEN))
            body = _read_exact(sock, header.length - HEADER_LEN)
            if header.command_id == LOGIN_RES:
                res = login_pb.IMLoginRes.FromString(body)
                return res.result_code, time.perf_counter() - start


def flood_main(port: int, threads: int, targets: list[str]) -> int:
    """The flooder process: bad logins until stdin closes; prints attempts and seconds."""
    wrong = password_digest("not the password")
    stop = threading.Event()
    counts = [0] * threads

    def run(i: int) -> None:
        n = 0
        while not stop.is_set():
            # Half wrong passwords for real users, half names that do not exist.
            name = targets[n % len(targets)] if n % 2 == 0 else f"nobody{i}-{n}"
            try:
                login_once(port, FLOOD_HOST, name, wrong)
            except OSError:
                pass
            n += 1
            counts[i] = n

    workers = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(threads)]
    start = time.monotonic()
    for w in workers:
        w.start()
    print("flooding", flush=True)
    sys.stdin.read()
    stop.set()
    print(f"{sum(counts)} {time.monotonic() - start:.3f}", flush=True)
    return 0


def measure(port: int, cold: list[str], returning: list[str]) -> dict[str, list[float]]:
    """Cold logins of ``cold``, then logins of ``returning`` in turn: latencies."""
    digest = password_digest(PASSWORD)
    out: dict[str, list[float]] = {"cold": [], "returning": []}
    for kind, names in (("cold", cold), ("returning", returning)):
        for name in names:
            code, seconds = login_once(port, MEASURE_HOST, name, digest)
            if code != 0:
                raise RuntimeError(f"{name}: login refused ({code})")
            out[kind].append(seconds)
    return out


def wait_ready(port: int, name: str) -> None:
    """Until msg_server answers a login (it links to db_proxy first)."""
    deadline = time.monotonic() + 30
    digest = password_digest(PASSWORD)
    while True:
        try:
            code, _ = login_once(port, MEASURE_HOST, name, digest)
        except OSError:
            code = -1
        if code == 0:
            return
        if (code not in LINKING and code != -1) or time.monotonic() > deadline:
            raise RuntimeError(f"msg_server not ready: login of {name} gave {code}")
        time.sleep(0.2)


def run_suite(label: str, throttle: bool, opts: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One suite: quiet and flooded measurements."""
    data = work / label
    data.mkdir()
    http, login, dbp, msg = free_ports(4)
    layout = SuiteLayout(
        data_dir=data,
        http_port=http,
        login_port=login,
        msg_ports=[msg],
        db_port=dbp,
        overrides={} if throttle else {"msg": NO_THROTTLE},
    )
    per_phase = opts.cold + 1  # +1: the user the returning logins repeat
    names = [f"legit{i}" for i in range(2 * per_phase)]
    targets = [f"target{i}" for i in range(opts.targets)]
    create_users(layout.database_url, names + targets, PASSWORD)
    children = layout.start_all()
    out: dict[str, Any] = {"label": label}
    try:
        quiet_names, flood_names = names[:per_phase], names[per_phase:]
        wait_ready(msg, quiet_names[0])
        out["quiet"] = measure(msg, quiet_names[1:], [quiet_names[0]] * opts.returning)
        flooder = subprocess.Popen(
            [sys.executable, __file__, "--flood", str(msg), str(opts.threads), *targets],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert flooder.stdin is not None and flooder.stdout is not None
        flooder.stdout.readline()
        time.sleep(opts.settle)
        wait_ready(msg, flood_names[0])
        out["flood"] = measure(msg, flood_names[1:], [flood_names[0]] * opts.returning)
        flooder.stdin.close()
        attempts, seconds = flooder.stdout.readline().split()
        flooder.wait(30)
        out["flood_per_s"] = int(attempts) / float(seconds)
    finally:
        stop_children(children)
    return out


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (
        f"mean {statistics.fmean(values) * 1e3:7.1f} ms  p50 {statistics.median(values) * 1e3:7.1f}"
        f"  p99 {p99 * 1e3:7.1f}"
    )


def table(results: list[dict[str, Any]]) -> str:
    lines = []
    for r in results:
        lines.append(f"{r['label']}: flood {r['flood_per_s']:,.0f} bad logins/s from {FLOOD_HOST}")
        for kind in ("cold", "returning"):
            quiet, flood = r["quiet"][kind], r["flood"][kind]
            lines.append(f"  {kind:9} quiet  {summary(quiet)}")
            lines.append(f"  {kind:9} flood  {summary(flood)}")
            ratio = statistics.fmean(flood) / statistics.fmean(quiet)
            lines.append(f"  {kind:9} flood/quiet (mean) {ratio:.2f}x")
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--flood":
        return flood_main(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cold", type=int, default=10, help="first logins per measurement")
    ap.add_argument("--returning", type=int, default=50, help="returning logins per measurement")
    ap.add_argument("--threads", type=int, default=16, help="flooding threads")
    ap.add_argument("--targets", type=int, default=20, help="existing users the flood guesses")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds of flood before measuring")
    ap.add_argument("--only", choices=["throttled", "unthrottled"], help="run one suite")
    opts = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="login-flood-"))
    try:
        results = [
            run_suite(label, throttle, opts, work)
            for label, throttle in (("throttled (default)", True), ("unthrottled", False))
            if opts.only is None or opts.only == label.split()[0]
        ]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"cores {os.cpu_count()}; every process shares them")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
