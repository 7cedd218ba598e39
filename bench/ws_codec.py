"""Per-message cost of the two sans-IO WebSocket libraries, as msg_server would use them.

One binary WebSocket message carries one TeamTalk PDU, so what a server pays per PDU is
one frame parsed (masked, from a browser) and one frame built (unmasked, to it). This
measures both directions for small messages with websockets' sans-IO layer
(``websockets.server.ServerProtocol``) and with wsproto (``wsproto.connection.Connection``,
its post-handshake part), in the same run, and prints microseconds per message and the
ratio wsproto / websockets (above 1: websockets is cheaper).

    .venv/bin/python bench/ws_codec.py                  # 64- and 512-byte messages
    .venv/bin/python bench/ws_codec.py --sizes 64 --messages 20000 --reps 3

Short by design (about ten seconds): pure CPU, one core, no sockets.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

from websockets.client import ClientProtocol
from websockets.frames import Frame
from websockets.protocol import OPEN
from websockets.server import ServerProtocol
from websockets.uri import parse_uri
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, Message

MAX_BYTES = 1 << 20


def client_frames(size: int, count: int) -> bytes:
    """``count`` masked binary frames of ``size`` bytes each, as a browser sends them."""
    client = ClientProtocol(parse_uri("ws://x/"), state=OPEN)
    payload = bytes(range(256)) * (size // 256 + 1)
    for _ in range(count):
        client.send_binary(payload[:size])
    return b"".join(client.data_to_send())


def chunks(stream: bytes, per_read: int, frame_len: int) -> list[bytes]:
    """The stream cut into reads of ``per_read`` whole frames (what one recv brings)."""
    step = per_read * frame_len
    return [stream[i : i + step] for i in range(0, len(stream), step)]


def websockets_receive(reads: list[bytes]) -> int:
    server = ServerProtocol(state=OPEN, max_size=MAX_BYTES)
    got = 0
    for data in reads:
        server.receive_data(data)
        for event in server.events_received():
            if isinstance(event, Frame):
                got += 1
        server.data_to_send()  # the server's buffers are drained, as a transport would
    return got


def wsproto_receive(reads: list[bytes]) -> int:
    conn = Connection(ConnectionType.SERVER)
    got = 0
    for data in reads:
        conn.receive_data(data)
        for event in conn.events():
            if isinstance(event, BytesMessage):
                got += 1
    return got


def websockets_send(payload: bytes, count: int) -> int:
    server = ServerProtocol(state=OPEN, max_size=MAX_BYTES)
    out = 0
    for _ in range(count):
        server.send_binary(payload)
        for chunk in server.data_to_send():
            out += len(chunk)
    return out


def wsproto_send(payload: bytes, count: int) -> int:
    conn = Connection(ConnectionType.SERVER)
    out = 0
    for _ in range(count):
        out += len(conn.send(Message(data=payload)))
    return out


def best_us(work: Callable[[], object], count: int, reps: int) -> float:
    """Median over ``reps`` runs of ``work``, in microseconds per message."""
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--per-read", type=int, default=4, help="frames arriving in one read")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    n = args.messages
    print(f"{n} messages per run, median of {args.reps}; us per message")
    print(f"{'size':>6} {'direction':<9} {'websockets':>11} {'wsproto':>9} {'ratio':>6}")
    for size in args.sizes:
        stream = client_frames(size, n)
        reads = chunks(stream, args.per_read, len(stream) // n)
        assert websockets_receive(reads) == n and wsproto_receive(reads) == n
        payload = bytes(size)
        rows: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {
            "receive": (partial(websockets_receive, reads), partial(wsproto_receive, reads)),
            "send": (partial(websockets_send, payload, n), partial(wsproto_send, payload, n)),
        }
        for direction, (ours, theirs) in rows.items():
            a = best_us(ours, n, args.reps)
            b = best_us(theirs, n, args.reps)
            print(f"{size:>6} {direction:<9} {a:>11.2f} {b:>9.2f} {b / a:>5.2f}x")


if __name__ == "__main__":
    main()
