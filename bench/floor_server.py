"""The least Python a frame-echo server can run: a measuring stick, not a server.

One ``epoll`` loop; per readiness event one ``recv``, the 16-byte headers
parsed inline, and the replies of that read sent with one ``send``. No
timers, no connection states, no flow control, no error handling beyond EOF:
everything a real reactor adds is left out. Whatever this scores is the
ceiling for any pure-Python server on this interpreter and kernel; the gap
between it and imreactor's echo server is all the reactor costs.

``--flush-per-iteration`` holds every reply until all the events of one
``epoll_wait`` are handled, then sends them: the "flush before sleep" that
imreactor's loop does, measured without anything else of a reactor
(``bench/cpu_split.py --servers floor,floor-flush``).

Peer-benchmark contract (``../shared/bench``): ``--port``, ``--reuseport``,
prints ``READY`` once listening, dies on SIGTERM. Run by ``bench/echo.sh
--with-floor``.
"""

from __future__ import annotations

import argparse
import resource
import select
import socket
import struct
import sys
from collections.abc import Callable

# Only what framing needs: total length, service id, command id, seq.
_unpack_from = struct.Struct("!I4xHHH").unpack_from
HEADER_LEN = 16
MAX_FRAME = 1 << 20
READ_SIZE = 65536

# socket, its recv, its send, bytes of an incomplete frame
_Conn = tuple[socket.socket, Callable[[int], bytes], Callable[[bytes | bytearray], int], bytearray]


def serve(port: int, reuseport: bool, flush_per_iteration: bool) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(4096)
    listener.setblocking(False)
    ep = select.epoll()
    listen_fd = listener.fileno()
    ep.register(listen_fd, select.EPOLLIN)
    conns: dict[int, _Conn] = {}
    sys.stdout.write("READY\n")
    sys.stdout.flush()
    poll = ep.poll
    held: list[tuple[Callable[[bytes | bytearray], int], bytes | bytearray]] = []
    while True:
        for send, reply in held:
            try:
                send(reply)
            except OSError:
                pass
        held.clear()
        for fd, _mask in poll():
            if fd == listen_fd:
                while True:
                    try:
                        sock, _ = listener.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:  # EMFILE and friends: try again on the next event
                        break
                    sock.setblocking(False)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    ep.register(sock.fileno(), select.EPOLLIN)
                    conns[sock.fileno()] = (sock, sock.recv, sock.send, bytearray())
                continue
            sock, recv, send, pending = conns[fd]
            try:
                data: bytes | bytearray = recv(READ_SIZE)
            except OSError:
                data = b""
            if not data:
                ep.unregister(fd)
                del conns[fd]
                sock.close()
                continue
            if pending:
                pending += data
                data = pending
            size = len(data)
            offset = 0
            out: list[bytes | bytearray] = []
            while size - offset >= HEADER_LEN:
                length, _sid, _cid, _seq = _unpack_from(data, offset)
                if length < HEADER_LEN or length > MAX_FRAME:
                    size = offset = 0  # drop the stream; the client sees no reply
                    break
                end = offset + length
                if end > size:
                    break
                out.append(data[offset:end])
                offset = end
            if data is pending:
                del pending[:offset]
            elif offset < size:
                pending += memoryview(data)[offset:]
            if out:
                # A partial send is not handled: with at most 16 small frames in flight
                # per connection, the kernel always takes a whole reply.
                reply = out[0] if len(out) == 1 else b"".join(out)
                if flush_per_iteration:
                    held.append((send, reply))
                    continue
                try:
                    send(reply)
                except OSError:  # reset by the peer: its EOF comes next
                    pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--reuseport", action="store_true")
    ap.add_argument("--flush-per-iteration", action="store_true", help="send after each poll")
    args = ap.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    serve(args.port, args.reuseport, args.flush_per_iteration)


if __name__ == "__main__":
    main()
