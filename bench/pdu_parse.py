"""PDUs parsed and dispatched per second, against a plain-``struct`` framer in the same run.

What is measured: a stream of IMMsgData PDUs (64-byte protobuf body, 80 bytes on the wire)
is cut into large chunks (64 KiB by default, the reactor's read size, so PDUs straddle
chunk ends) and fed to ``data_received`` of an :class:`~imreactor.pdu.imconn.ImConnection`
whose transport does nothing. Each PDU goes through the real receive path: incremental
framing, the dispatcher lookup, protobuf decoding (``ParseFromString`` and the
``IsInitialized`` check) and a handler call.

The baseline is the least a Python framer can do on the same chunks: unpack each header
with ``struct`` and slice out the frame, carrying a partial PDU over to the next chunk.
No protobuf, no dispatch. ``ratio`` = imreactor rate / baseline rate; each rate is the
median over ``--repeat`` runs.

usage: .venv/bin/python bench/pdu_parse.py [--pdus N] [--chunk BYTES] [--repeat N]
"""

from __future__ import annotations

import argparse
import statistics
import struct
import sys
import time
from collections.abc import Callable
from typing import Any, cast

from imreactor.net.connection import CONNECTED, Connection
from imreactor.pdu.header import HEADER_LEN, encode_pdu
from imreactor.pdu.imconn import Dispatcher, ImConnection, LinkPolicy
from imreactor.pdu.proto import im_base_define_pb2 as base
from imreactor.pdu.proto import im_message_pb2
from imreactor.pdu.registry import ids_of

BODY_BYTES = 64


class NullTransport:
    """Enough of a Connection for the receive path: always CONNECTED, writes go nowhere."""

    state = CONNECTED

    def write(self, data: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self, exc: BaseException | None = None) -> None:
        raise RuntimeError(f"the benchmark stream was rejected: {exc}")


def message(i: int) -> im_message_pb2.IMMsgData:
    """An IMMsgData whose body is exactly BODY_BYTES long (the text is padded to fit)."""
    msg = im_message_pb2.IMMsgData(
        from_user_id=100_000 + i % 1000,
        to_session_id=200_000 + i % 777,
        msg_id=1_000_000 + i,
        create_time=1_700_000_000 + i,
        msg_type=base.MSG_TYPE_SINGLE_TEXT,
        msg_data=b"",
    )
    # ByteSize() already counts msg_data's tag and its one-byte length (set, though empty).
    msg.msg_data = b"x" * (BODY_BYTES - msg.ByteSize())
    if msg.ByteSize() != BODY_BYTES:
        raise RuntimeError(f"body of {msg.ByteSize()} bytes, not {BODY_BYTES}")
    return msg


def make_chunks(pdus: int, chunk: int) -> list[bytes]:
    service_id, command_id = ids_of(im_message_pb2.IMMsgData)
    stream = b"".join(
        encode_pdu(service_id, command_id, i % 0xFFFF + 1, message(i).SerializeToString())
        for i in range(pdus)
    )
    if len(stream) != pdus * (HEADER_LEN + BODY_BYTES):
        raise RuntimeError("PDUs of unexpected sizes")
    return [stream[i : i + chunk] for i in range(0, len(stream), chunk)]


def run_imconn(chunks: list[bytes]) -> tuple[int, float]:
    """Feed the chunks to a fresh ImConnection; returns (PDUs handled, seconds)."""
    handled = 0

    def on_msg_data(conn: ImConnection, msg: im_message_pb2.IMMsgData, seq: int) -> None:
        nonlocal handled
        handled += 1

    dispatcher = Dispatcher[ImConnection]()
    dispatcher.register(im_message_pb2.IMMsgData, on_msg_data)
    proto = ImConnection(dispatcher, None, LinkPolicy(heartbeat_s=None, timeout_s=None))
    proto.connection_made(cast(Connection, NullTransport()))
    receive = proto.data_received
    start = time.perf_counter()
    for chunk in chunks:
        receive(chunk)
    elapsed = time.perf_counter() - start
    if proto.bad_pdus:
        raise RuntimeError(f"{proto.bad_pdus} PDUs refused")
    return handled, elapsed


_HEADER = struct.Struct(">IHHHHHH")


def run_struct(chunks: list[bytes]) -> tuple[int, float]:
    """The baseline: struct-unpack each header and slice the frame; (PDUs framed, seconds)."""
    unpack_from = _HEADER.unpack_from
    framed = 0
    rest = b""
    start = time.perf_counter()
    for chunk in chunks:
        data = rest + chunk if rest else chunk
        size = len(data)
        offset = 0
        while size - offset >= 16:
            length, _, _, _service_id, _command_id, _seq, _ = unpack_from(data, offset)
            end = offset + length
            if end > size:
                break
            _frame = data[offset:end]
            framed += 1
            offset = end
        rest = data[offset:]
    elapsed = time.perf_counter() - start
    return framed, elapsed


def rate(run: Callable[[list[bytes]], tuple[int, float]], chunks: list[bytes], pdus: int) -> float:
    """PDUs per second of one run, after checking that every PDU got through."""
    count, elapsed = run(chunks)
    if count != pdus:
        raise RuntimeError(f"{run.__name__} handled {count} of {pdus} PDUs")
    return count / elapsed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--pdus", type=int, default=200_000, help="PDUs per run (default 200000)")
    ap.add_argument("--chunk", type=int, default=64 * 1024, help="bytes per read (default 64 KiB)")
    ap.add_argument("--repeat", type=int, default=7, help="runs per contender (default 7)")
    args = ap.parse_args(argv)

    chunks = make_chunks(args.pdus, args.chunk)
    # Warm up both paths (imports, protobuf's first parse, branch caches).
    run_imconn(chunks[:4])
    run_struct(chunks[:4])
    # Interleaved, so that a burst of noise on the machine hits both alike.
    imconn_rates: list[float] = []
    struct_rates: list[float] = []
    for _ in range(args.repeat):
        imconn_rates.append(rate(run_imconn, chunks, args.pdus))
        struct_rates.append(rate(run_struct, chunks, args.pdus))
    mine = statistics.median(imconn_rates)
    base_rate = statistics.median(struct_rates)

    print(
        f"{args.pdus} IMMsgData PDUs ({HEADER_LEN}+{BODY_BYTES} bytes) in {len(chunks)} reads of "
        f"{args.chunk} bytes; median of {args.repeat} runs; Python {sys.version.split()[0]}"
    )
    print()
    print("| path | PDUs/s (median) | min | max |")
    print("|---|---:|---:|---:|")
    for label, rates in (
        ("FrameProtocol + ImConnection (decode + dispatch)", imconn_rates),
        ("plain struct framing (no protobuf)", struct_rates),
    ):
        print(
            f"| {label} | {statistics.median(rates):,.0f} | {min(rates):,.0f} | {max(rates):,.0f} |"
        )
    print()
    print(f"ratio imreactor / struct baseline: {mine / base_rate:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
