"""TLS specifics, on every backend (the transport contract itself is checked over TLS by
test_transport.py): verification failures, handshakes that fail or never finish,
renegotiation, close_notify and ragged EOFs, large writes, mutual TLS, SNI, coalescing."""

from __future__ import annotations

import datetime
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable

import pytest

from imreactor import pki as pki_files
from imreactor.net import ConnState, EventLoop, FlowControl, PeerTooSlow
from imreactor.net.tls import TLSHandshakeTimeout, TLSTransport, client_context

from . import pki
from .helpers import Collect, Echo, Recorder, RunUntil, client, run_for

pytestmark = pytest.mark.timeout(60)


def _served(loop: EventLoop, **kw: object) -> tuple[Collect[Echo], int]:
    echoes = Collect(Echo)
    server = loop.listen("127.0.0.1", 0, echoes, ssl=kw.pop("ssl", pki.server_ctx()), **kw)  # type: ignore[arg-type]
    return echoes, server.port


def _recorded(loop: EventLoop) -> tuple[Collect[Recorder], int]:
    """A TLS listener whose protocols only record; (them, port)."""
    made = Collect(Recorder)
    return made, loop.listen("127.0.0.1", 0, made, ssl=pki.server_ctx()).port


def _connect(loop: EventLoop, port: int, **kw: object) -> tuple[Recorder, TLSTransport]:
    proto = Recorder()
    tls = loop.connect("127.0.0.1", port, proto, ssl=kw.pop("ssl", pki.client_ctx()), **kw)  # type: ignore[call-overload]
    assert isinstance(tls, TLSTransport)
    return proto, tls


def _in_thread(work: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    """Run blocking ``work`` in a thread; its result (or exception) lands in the list."""
    out: list[object] = []

    def target() -> None:
        try:
            out.append(work())
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


def _blocking_client(port: int) -> ssl.SSLSocket:
    """A blocking stdlib TLS client that reports a missing close_notify as an error."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return pki.client_ctx().wrap_socket(
        sock, server_hostname="localhost", suppress_ragged_eofs=False
    )


def test_handshake_is_a_visible_state(loop: EventLoop, run_until: RunUntil) -> None:
    _, port = _served(loop)
    proto, tls = _connect(loop, port)
    assert tls.state is ConnState.CONNECTING
    seen: set[ConnState] = set()

    def note_state() -> bool:
        seen.add(tls.state)
        return proto.made

    run_until(note_state)
    assert ConnState.HANDSHAKING in seen
    state: ConnState = tls.state
    assert state is ConnState.CONNECTED and tls.established
    assert tls.ssl_object.version() in ("TLSv1.2", "TLSv1.3")


def test_wrong_host_name_fails_the_connect(loop: EventLoop, run_until: RunUntil) -> None:
    echoes, port = _served(loop)
    proto, _ = _connect(loop, port, server_hostname="wrong.example")
    run_until(lambda: proto.failed)
    [exc] = proto.failed
    assert isinstance(exc, ssl.SSLCertVerificationError)
    assert "Hostname mismatch" in str(exc)
    assert proto.events == ["failed"]
    assert echoes.made == []  # the server never made a protocol for it


def test_unknown_ca_fails_the_connect_and_is_logged_once_by_the_server(
    loop: EventLoop, run_until: RunUntil, caplog: pytest.LogCaptureFixture
) -> None:
    echoes, port = _served(loop)
    proto, _ = _connect(loop, port, ssl=client_context(str(pki.foreign_ca().cert)))
    run_until(lambda: proto.failed)
    assert isinstance(proto.failed[0], ssl.SSLCertVerificationError)
    assert "unable to get local issuer certificate" in str(proto.failed[0])
    run_until(lambda: "tlsv1 alert unknown ca" in caplog.text)
    run_for(loop, 0.1)
    assert caplog.text.count("tlsv1 alert unknown ca") == 1
    assert echoes.made == []


def test_expired_certificate_fails_the_connect(loop: EventLoop, run_until: RunUntil) -> None:
    old = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
    expired = pki_files.issue(
        pki.ca(), pki.directory(), "expired", hosts=["127.0.0.1"], days=1, not_before=old
    )
    _, port = _served(loop, ssl=pki.server_ctx(expired))
    proto, _ = _connect(loop, port)
    run_until(lambda: proto.failed)
    assert isinstance(proto.failed[0], ssl.SSLCertVerificationError)
    assert "certificate has expired" in str(proto.failed[0])


def test_plain_tcp_to_a_tls_port_closes_only_that_connection(
    loop: EventLoop, run_until: RunUntil, caplog: pytest.LogCaptureFixture
) -> None:
    echoes, port = _served(loop)
    good, tls = _connect(loop, port)
    run_until(lambda: good.made)
    plain = client(port)
    try:
        plain.sendall(b"GET / HTTP/1.0\r\n\r\n" + b"\x00" * 600)
        plain.settimeout(0.05)
        closed: list[bytes] = []

        def peer_closed() -> bool:
            try:
                closed.append(plain.recv(4096))
            except TimeoutError:
                return False
            except ConnectionError:
                return True
            return closed[-1] == b""

        run_until(peer_closed, what="the server closed the plain connection")
        assert "TLS handshake with 127.0.0.1" in caplog.text
        assert "wrong version number" in caplog.text or "http request" in caplog.text
        tls.write(b"still here")  # the TLS client next to it noticed nothing
        run_until(lambda: bytes(good.received) == b"still here")
        assert good.lost == [] and len(echoes.made) == 1
    finally:
        plain.close()


def test_server_gives_up_on_a_handshake_that_never_finishes(
    loop: EventLoop, run_until: RunUntil, caplog: pytest.LogCaptureFixture
) -> None:
    echoes, port = _served(loop, handshake_timeout_s=0.3)
    silent = client(port)  # connects, never says ClientHello
    try:
        silent.settimeout(0.05)
        ended: list[bool] = []

        def reset() -> bool:
            try:
                ended.append(silent.recv(1) == b"")
            except TimeoutError:
                return False
            except ConnectionResetError:
                ended.append(True)
            return bool(ended)

        run_until(reset, what="the server dropped the silent client")
        assert "TLS handshake did not finish in 0.3 s" in caplog.text
        assert echoes.made == []
    finally:
        silent.close()


def test_client_gives_up_on_a_server_that_never_answers_the_hello(
    loop: EventLoop, run_until: RunUntil
) -> None:
    mute = socket.create_server(("127.0.0.1", 0))  # accepts (kernel backlog), never answers
    try:
        proto, tls = _connect(loop, mute.getsockname()[1], handshake_timeout_s=0.3)
        run_until(lambda: proto.failed)
        assert isinstance(proto.failed[0], TLSHandshakeTimeout)
        assert tls.state is ConnState.CLOSED
    finally:
        mute.close()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command (s_client)")
def test_renegotiation_is_refused(
    loop: EventLoop, run_until: RunUntil, caplog: pytest.LogCaptureFixture
) -> None:
    # OpenSSL 3 refuses client-initiated renegotiation by default; harden() sets
    # OP_NO_RENEGOTIATION so that no build or version allows it.
    echoes, port = _served(loop)
    argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_2"]
    argv += ["-CAfile", str(pki.ca().cert)]
    s_client = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        assert s_client.stdin is not None
        run_until(lambda: echoes.made, what="s_client connected")
        s_client.stdin.write(b"hello\n")
        s_client.stdin.flush()
        run_until(lambda: echoes.made[0].received == b"hello\n")
        s_client.stdin.write(b"R\n")  # s_client's command: renegotiate
        s_client.stdin.flush()
        run_until(lambda: echoes.made[0].lost, what="the renegotiating client is closed")
        assert isinstance(echoes.made[0].lost[0], ssl.SSLError)
        out, _ = s_client.communicate(timeout=10)
        assert b"no renegotiation" in out
    finally:
        s_client.kill()
        s_client.wait()


def test_large_writes_arrive_whole(loop: EventLoop, run_until: RunUntil) -> None:
    _, port = _served(loop)
    proto, tls = _connect(loop, port)
    run_until(lambda: proto.made)
    payload = bytes(range(251)) * (8 * 1024 * 1024 // 251)
    tls.write(payload)  # one 8 MiB write: hundreds of records, echoed back
    run_until(lambda: len(proto.received) == len(payload), timeout_s=30)
    assert bytes(proto.received) == payload


def test_close_sends_close_notify(loop: EventLoop, run_until: RunUntil) -> None:
    made, port = _recorded(loop)
    thread, out = _in_thread(lambda: _read_to_end(_blocking_client(port)))
    run_until(lambda: made.made)
    made.made[0].connection().write(b"bye")
    made.made[0].connection().close()
    run_until(lambda: not thread.is_alive())
    assert out == [b"bye"]  # recv() gave b"" only because close_notify came


def _read_to_end(tls: ssl.SSLSocket) -> bytes:
    data = b""
    with tls:
        while chunk := tls.recv(65536):
            data += chunk
    return data


def test_abort_sends_no_close_notify(loop: EventLoop, run_until: RunUntil) -> None:
    made, port = _recorded(loop)
    thread, out = _in_thread(lambda: _read_to_end(_blocking_client(port)))
    run_until(lambda: made.made)
    made.made[0].connection().abort()
    run_until(lambda: not thread.is_alive())
    assert isinstance(out[0], (ConnectionResetError, ssl.SSLEOFError))


def test_peer_close_notify_is_an_orderly_end(loop: EventLoop, run_until: RunUntil) -> None:
    made, port = _recorded(loop)

    def talk_then_unwrap() -> bytes:
        tls = _blocking_client(port)
        tls.sendall(b"one")
        plain = tls.unwrap()  # sends close_notify, waits for the server's answer
        plain.close()
        return b"unwrapped"

    thread, out = _in_thread(talk_then_unwrap)
    run_until(lambda: made.made and made.made[0].lost)
    run_until(lambda: not thread.is_alive())
    assert out == [b"unwrapped"]  # our close_notify answered theirs
    assert made.made[0].received == b"one"
    assert made.made[0].lost == [None]


def test_eof_without_close_notify_is_not_orderly(loop: EventLoop, run_until: RunUntil) -> None:
    made, port = _recorded(loop)

    def talk_then_fin() -> None:
        tls = _blocking_client(port)
        tls.sendall(b"cut")
        raw = socket.socket(fileno=tls.detach())  # FIN on the TCP level only
        raw.shutdown(socket.SHUT_WR)
        raw.settimeout(10)
        while raw.recv(4096):
            pass
        raw.close()

    thread, _ = _in_thread(talk_then_fin)
    run_until(lambda: made.made and made.made[0].lost)
    thread.join(10)
    assert made.made[0].received == b"cut"
    [exc] = made.made[0].lost
    assert isinstance(exc, ConnectionResetError)
    assert "without close_notify" in str(exc)


def test_a_client_that_stops_reading_is_cut_off_alone(loop: EventLoop, run_until: RunUntil) -> None:
    flow = FlowControl(high_water=16 * 1024, max_buffer=256 * 1024)
    made = Collect(Recorder)
    port = loop.listen("127.0.0.1", 0, made, ssl=pki.server_ctx(), flow=flow).port
    reader, reader_tls = _connect(loop, port)
    sleeper, sleeper_tls = _connect(loop, port)
    run_until(lambda: reader.made and sleeper.made and len(made.made) == 2)
    sleeper_tls.pause_reading()
    to_sleeper = next(
        p
        for p in made.made
        if p.conn is not None and p.conn.remote_address == sleeper_tls.local_address
    )
    chunk = b"z" * 65536
    for _ in range(4096):
        if to_sleeper.conn is None or to_sleeper.conn.state is not ConnState.CONNECTED:
            break
        to_sleeper.conn.write(chunk)
        loop.run_once(0)
    run_until(lambda: to_sleeper.lost)
    assert isinstance(to_sleeper.lost[0], PeerTooSlow)
    reader_tls.write(b"unaffected")
    other = next(p for p in made.made if p is not to_sleeper)
    run_until(lambda: other.received == b"unaffected")
    assert other.lost == [] and reader.lost == []


def test_mutual_tls_requires_a_client_certificate(loop: EventLoop, run_until: RunUntil) -> None:
    member = pki_files.issue(pki.ca(), pki.directory(), "member", hosts=["member.cluster"])
    made = Collect(Recorder)
    ctx = pki.server_ctx(client_ca=pki.ca())
    port = loop.listen("127.0.0.1", 0, made, ssl=ctx).port
    anonymous, anon_tls = _connect(loop, port)
    anon_tls.write(b"hello?")  # TLS 1.3: the server's refusal comes after the client's Finished
    run_until(lambda: anonymous.failed or anonymous.lost)
    assert made.made == []
    known, _ = _connect(loop, port, ssl=pki.client_ctx(member))
    run_until(lambda: known.made and made.made)
    peer = made.made[0].connection()
    assert isinstance(peer, TLSTransport)
    cert = peer.peer_certificate()
    assert cert is not None
    assert ("commonName", "member.cluster") in [pair for rdn in cert["subject"] for pair in rdn]


def test_sni_carries_the_server_hostname(loop: EventLoop, run_until: RunUntil) -> None:
    names: list[str | None] = []
    ctx = pki.server_ctx()
    ctx.sni_callback = lambda _obj, name, _ctx: names.append(name)
    _, port = _served(loop, ssl=ctx)
    proto, _ = _connect(loop, port, server_hostname="localhost")
    run_until(lambda: proto.made)
    assert names == ["localhost"]


def test_writes_of_one_iteration_share_one_tcp_send(loop: EventLoop, run_until: RunUntil) -> None:
    _, port = _served(loop)
    proto, tls = _connect(loop, port)
    run_until(lambda: proto.made)
    seen: list[object] = []

    def burst() -> None:
        for i in range(10):
            tls.write(b"frame %d;" % i)
        assert loop.write_batch is not None
        seen.extend(loop.write_batch)

    loop.call_soon(burst)
    run_until(lambda: len(proto.received) == len(b"".join(b"frame %d;" % i for i in range(10))))
    # Ten records, collected once by the one TCP connection (the server's end may be in
    # the batch too, with its own post-handshake messages).
    assert seen.count(tls.lower) == 1


def test_a_stalled_handshake_does_not_hold_up_other_connections(
    loop: EventLoop, run_until: RunUntil
) -> None:
    _, port = _served(loop, handshake_timeout_s=60.0)
    stalled = client(port)  # holds a handshake open for the whole test
    try:
        proto, tls = _connect(loop, port)
        run_until(lambda: proto.made)
        tls.write(b"ping")
        run_until(lambda: proto.received == b"ping")
        stalled.setblocking(False)
        with pytest.raises(BlockingIOError):
            stalled.recv(1)  # still open, still waiting for its ClientHello
    finally:
        stalled.close()


class _Piecewise(Recorder):
    """Answers each read with one write per byte, then (optionally) closes."""

    close_after = False

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        assert self.conn is not None
        for i in range(len(data)):
            self.conn.write(data[i : i + 1])
        if self.close_after:
            self.conn.close()


class _CountingSSLObject:
    """Stands in for a transport's SSLObject and counts the plaintext writes."""

    def __init__(self, real: ssl.SSLObject) -> None:
        self.real = real
        self.writes: list[int] = []

    def write(self, data: bytes) -> int:
        self.writes.append(len(data))
        return self.real.write(data)

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)


@pytest.mark.parametrize("close_after", [False, True])
def test_the_writes_answering_one_read_are_encrypted_together_in_order(
    loop: EventLoop, run_until: RunUntil, close_after: bool
) -> None:
    made = Collect(_Piecewise)
    port = loop.listen("127.0.0.1", 0, made, ssl=pki.server_ctx()).port
    proto, tls = _connect(loop, port)
    run_until(lambda: len(made) == 1 and made.made[0].conn is not None and proto.conn is not None)
    server = made.made[0]
    server.close_after = close_after
    transport = server.conn
    assert isinstance(transport, TLSTransport)
    counting = _CountingSSLObject(transport._sslobj)
    transport._sslobj = counting  # type: ignore[assignment]
    tls.write(b"sixteen bytes!!!")
    run_until(lambda: bytes(proto.received) == b"sixteen bytes!!!")
    assert counting.writes[0] == 16  # one encryption for the sixteen one-byte writes
    if close_after:
        run_until(lambda: proto.lost == [None])  # close_notify came after the data
    else:
        transport.write(b"+")  # outside a read: written at once, as before
        run_until(lambda: bytes(proto.received) == b"sixteen bytes!!!+")
        assert counting.writes == [16, 1]
