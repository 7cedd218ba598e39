"""RedisClient against a real redis-server (and, for what Redis never does, a scripted one).

The scripted server is a listener on the test's loop that answers the handshake's PING
and then sends whatever the test wants: a reply cut off by a close, bytes that are not
RESP, a reply nobody asked for, or nothing at all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from net.helpers import drive_until, run_for

from imreactor.net import EventLoop, Protocol, Transport
from imreactor.net.tls import client_context
from imreactor.redis import (
    RedisAddress,
    RedisClient,
    RedisConnectionError,
    RedisError,
    RedisProcess,
    RedisProtocolError,
    RedisReplyError,
    RedisTimeout,
    parse_redis_url,
)


class Result:
    """A callback that keeps what it got."""

    def __init__(self) -> None:
        self.done = False
        self.reply: Any = None
        self.error: RedisError | None = None

    def __call__(self, reply: Any, error: RedisError | None) -> None:
        assert not self.done, "a callback ran twice"
        self.done, self.reply, self.error = True, reply, error


@pytest.fixture
def loop() -> Iterator[EventLoop]:
    loop = EventLoop(debug=True)
    yield loop
    loop.close()


def make_client(loop: EventLoop, address: RedisAddress, **kw: Any) -> RedisClient:
    kw.setdefault("backoff_delays_s", (0.05,))
    client = RedisClient(loop, address, **kw)
    client.start()
    return client


def call(
    loop: EventLoop, client: RedisClient, *args: Any, timeout_s: float | None = None
) -> Result:
    """Run one command to its end."""
    result = Result()
    client.execute(*args, callback=result, timeout_s=timeout_s)
    drive_until(loop, lambda: result.done, what=f"reply to {args}")
    return result


@pytest.fixture
def client(loop: EventLoop, redis_server: RedisProcess) -> Iterator[RedisClient]:
    client = make_client(loop, redis_server.address)
    drive_until(loop, lambda: client.ready, what="redis client ready")
    yield client
    client.stop()
    run_for(loop, 0.05)


def test_commands_pipeline_and_answer_in_order(loop: EventLoop, client: RedisClient) -> None:
    results = [Result() for _ in range(2000)]
    for r in results:  # all written before any reply is read
        client.execute("INCR", "counter", callback=r)
    assert client.pending == 2000
    drive_until(loop, lambda: all(r.done for r in results))
    assert [r.reply for r in results] == list(range(1, 2001))
    assert call(loop, client, "SET", "k", b"\x00\xffbinary").reply == b"OK"
    assert call(loop, client, "GET", "k").reply == b"\x00\xffbinary"
    assert call(loop, client, "GET", "missing").reply is None
    assert call(loop, client, "RPUSH", "l", 1, 2.5, "x").reply == 3
    assert call(loop, client, "LRANGE", "l", 0, -1).reply == [b"1", b"2.5", b"x"]


def test_an_error_reply_fails_that_command_only(loop: EventLoop, client: RedisClient) -> None:
    call(loop, client, "SET", "s", "text")
    before, bad, after = Result(), Result(), Result()
    client.execute("GET", "s", callback=before)
    client.execute("INCR", "s", callback=bad)
    client.execute("GET", "s", callback=after)
    drive_until(loop, lambda: after.done)
    assert before.reply == after.reply == b"text"
    assert isinstance(bad.error, RedisReplyError)
    assert "not an integer" in str(bad.error)
    unknown = call(loop, client, "NO-SUCH-COMMAND", "x")
    assert isinstance(unknown.error, RedisReplyError) and "unknown command" in str(unknown.error)
    assert client.ready and client.connects == 1  # the link stayed up


def test_an_error_inside_an_array_is_an_element(loop: EventLoop, client: RedisClient) -> None:
    call(loop, client, "SET", "s", "text")
    call(loop, client, "MULTI")
    call(loop, client, "INCR", "s")
    call(loop, client, "SET", "t", 1)
    replies = call(loop, client, "EXEC").reply
    assert isinstance(replies[0], RedisReplyError) and replies[1] == b"OK"


def test_not_connected_fails_at_once_but_never_inside_execute(loop: EventLoop) -> None:
    client = RedisClient(loop, RedisAddress("127.0.0.1", 1))
    result = Result()
    client.execute("PING", callback=result)
    assert not result.done  # never re-entered from execute()
    drive_until(loop, lambda: result.done)
    assert isinstance(result.error, RedisConnectionError) and "not connected" in str(result.error)


def test_a_bad_argument_is_the_callers_error(loop: EventLoop, client: RedisClient) -> None:
    with pytest.raises(TypeError):
        client.execute("SET", "k", None)  # type: ignore[arg-type]
    assert call(loop, client, "PING").reply == b"PONG"


def test_a_failing_callback_is_logged_and_harms_nothing(
    loop: EventLoop, client: RedisClient, caplog: pytest.LogCaptureFixture
) -> None:
    def boom(reply: Any, error: RedisError | None) -> None:
        raise ValueError("callback bug")

    client.execute("PING", callback=boom)
    assert call(loop, client, "PING").reply == b"PONG"
    assert "a redis reply callback failed" in caplog.text
    assert client.connects == 1


def test_database_and_password_from_the_url(loop: EventLoop, redis_server: RedisProcess) -> None:
    port = redis_server.port
    admin = make_client(loop, RedisAddress("127.0.0.1", port))
    drive_until(loop, lambda: admin.ready)
    assert call(loop, admin, "CONFIG", "SET", "requirepass", "s3cret").reply == b"OK"

    good = make_client(loop, RedisAddress("127.0.0.1", port, db=3, password="s3cret"))
    drive_until(loop, lambda: good.ready)
    call(loop, good, "SET", "where", "db3")
    assert call(loop, good, "GET", "where").reply == b"db3"
    assert call(loop, good, "SELECT", 0).reply == b"OK"
    assert call(loop, good, "GET", "where").reply is None

    wrong = make_client(loop, RedisAddress("127.0.0.1", port, password="guess"))
    run_for(loop, 0.3)
    assert not wrong.ready and wrong.attempts >= 2 and wrong.connects == 0
    for c in (admin, good, wrong):
        c.stop()
    run_for(loop, 0.05)


def test_reconnects_after_a_redis_restart(loop: EventLoop, redis_server: RedisProcess) -> None:
    ups: list[int] = []
    downs: list[BaseException | None] = []
    client = make_client(
        loop, redis_server.address, on_up=lambda: ups.append(1), on_down=downs.append
    )
    drive_until(loop, lambda: client.ready)
    call(loop, client, "SET", "kept", "yes")

    redis_server.stop()
    drive_until(loop, lambda: not client.ready, what="the link seen down")
    assert len(downs) == 1
    failed = call(loop, client, "GET", "kept")
    assert isinstance(failed.error, RedisConnectionError)
    run_for(loop, 0.2)  # a few refused attempts
    assert not client.ready

    redis_server.start()  # same port, same append-only file
    drive_until(loop, lambda: client.ready, what="reconnected")
    assert len(ups) == 2 and client.connects == 2
    assert call(loop, client, "GET", "kept").reply == b"yes"
    client.stop()
    run_for(loop, 0.05)


def test_a_crash_fails_what_was_waiting(loop: EventLoop, redis_server: RedisProcess) -> None:
    client = make_client(loop, redis_server.address)
    drive_until(loop, lambda: client.ready)
    waiting = Result()
    client.execute("BLPOP", "never", 0, callback=waiting, timeout_s=30)
    run_for(loop, 0.05)  # it is at the server, blocked
    redis_server.kill()
    drive_until(loop, lambda: waiting.done)
    assert isinstance(waiting.error, RedisConnectionError)
    assert "lost" in str(waiting.error)
    client.stop()


def test_a_late_reply_times_out_and_the_link_is_remade(
    loop: EventLoop, client: RedisClient, redis_server: RedisProcess
) -> None:
    other = make_client(loop, redis_server.address)
    drive_until(loop, lambda: other.ready)
    # CLIENT PAUSE holds every client's commands: a real Redis that does not answer.
    assert call(loop, other, "CLIENT", "PAUSE", 700, "ALL").reply == b"OK"
    late, behind = Result(), Result()
    client.execute("PING", callback=late, timeout_s=0.2)
    client.execute("PING", callback=behind, timeout_s=10)
    drive_until(loop, lambda: late.done and behind.done)
    assert isinstance(late.error, RedisTimeout)
    assert isinstance(behind.error, RedisTimeout)  # it was stuck behind the late one
    drive_until(loop, lambda: client.ready and client.connects == 2, what="reconnected")
    assert call(loop, client, "PING").reply == b"PONG"
    other.stop()


def test_too_many_unanswered_commands_are_refused(
    loop: EventLoop, redis_server: RedisProcess
) -> None:
    client = make_client(loop, redis_server.address, max_pending=3)
    drive_until(loop, lambda: client.ready)
    results = [Result() for _ in range(5)]
    for r in results:
        client.execute("PING", callback=r)
    drive_until(loop, lambda: all(r.done for r in results))
    assert [r.reply for r in results[:3]] == [b"PONG"] * 3
    assert all("unanswered" in str(r.error) for r in results[3:])
    client.stop()


def test_stop_fails_waiting_commands_and_stays_down(loop: EventLoop, client: RedisClient) -> None:
    waiting = Result()
    client.execute("BLPOP", "never", 0, callback=waiting, timeout_s=30)
    client.stop()
    drive_until(loop, lambda: waiting.done)
    assert "stopped" in str(waiting.error)
    run_for(loop, 0.2)
    assert not client.ready and client.attempts == 1


# -- a scripted server, for what a real Redis never does -----------------------------------


class Scripted(Protocol):
    """Answers the handshake's PING, then sends ``then`` at the next command (None: nothing)."""

    def __init__(self, then: bytes | None, close: bool) -> None:
        self.then, self.close, self.commands = then, close, 0
        self.conn: Transport | None = None

    def connection_made(self, conn: Transport) -> None:
        self.conn = conn

    def data_received(self, data: bytes) -> None:
        assert self.conn is not None
        self.commands += 1
        if self.commands == 1:
            self.conn.write(b"+PONG\r\n")
        elif self.then is not None:
            self.conn.write(self.then)
            if self.close:
                self.conn.close()


def scripted(loop: EventLoop, then: bytes | None, close: bool = False) -> Callable[[], RedisClient]:
    server = loop.listen("127.0.0.1", 0, lambda: Scripted(then, close))

    def connect() -> RedisClient:
        client = make_client(loop, RedisAddress("127.0.0.1", server.port))
        drive_until(loop, lambda: client.ready)
        return client

    return connect


@pytest.mark.parametrize(
    ("then", "close", "kind", "words"),
    [
        (b"$10\r\nabc", True, RedisConnectionError, "lost"),  # closed in the middle of a reply
        (b"+OK\r", True, RedisConnectionError, "lost"),  # ... of a line
        (b"?what\r\n", False, RedisProtocolError, "malformed"),  # not RESP
        (b"+OK\r\n+EXTRA\r\n", False, RedisProtocolError, "nobody asked"),
        (None, False, RedisTimeout, "no reply in time"),  # silence
    ],
    ids=["mid-bulk", "mid-line", "not-resp", "unasked-reply", "silent"],
)
def test_a_broken_server_fails_the_link_and_it_is_remade(
    loop: EventLoop, then: bytes | None, close: bool, kind: type[RedisError], words: str
) -> None:
    client = scripted(loop, then, close)()
    first = Result()
    client.execute("GET", "k", callback=first, timeout_s=0.3)
    drive_until(loop, lambda: first.done)
    if then == b"+OK\r\n+EXTRA\r\n":  # the first reply is fine; the extra one breaks the link
        assert first.reply == b"OK"
        drive_until(loop, lambda: client.connects == 2)
    else:
        assert isinstance(first.error, kind), first.error
        assert words in str(first.error)
        drive_until(loop, lambda: client.connects == 2, what="reconnected")
    client.stop()
    run_for(loop, 0.05)


def test_a_handshake_error_is_logged_and_retried(
    loop: EventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    # A server still loading its data answers -LOADING: not ready, try again later.
    server = loop.listen("127.0.0.1", 0, lambda: Loading())
    caplog.set_level(logging.ERROR)
    client = make_client(loop, RedisAddress("127.0.0.1", server.port))
    drive_until(loop, lambda: client.attempts >= 3, what="retries")
    assert not client.ready
    assert "refused the handshake: LOADING" in caplog.text
    client.stop()
    run_for(loop, 0.05)


class Loading(Protocol):
    def connection_made(self, conn: Transport) -> None:
        self.conn = conn

    def data_received(self, data: bytes) -> None:
        self.conn.write(b"-LOADING Redis is loading the dataset in memory\r\n")


def test_rediss_verifies_the_server_and_runs_commands(
    loop: EventLoop, tls_redis_server: tuple[RedisProcess, Path]
) -> None:
    tls_redis, ca_file = tls_redis_server
    address = parse_redis_url(tls_redis.url)
    assert address.tls and address.port == tls_redis.tls_port != tls_redis.port
    client = make_client(loop, address, ssl_context=client_context(str(ca_file)))
    drive_until(loop, lambda: client.ready, what="TLS redis client ready")
    assert call(loop, client, "SET", "k", b"\x00v").error is None
    assert call(loop, client, "GET", "k").reply == b"\x00v"
    client.stop()
    run_for(loop, 0.05)


def test_rediss_refuses_a_server_no_trusted_ca_signed(
    loop: EventLoop, tls_redis_server: tuple[RedisProcess, Path], caplog: pytest.LogCaptureFixture
) -> None:
    # The system's CAs did not sign the test CA's certificate: no link, ever.
    client = make_client(loop, parse_redis_url(tls_redis_server[0].url))
    drive_until(loop, lambda: client.attempts >= 3, what="reconnect attempts")
    assert not client.ready and client.connects == 0
    result = call(loop, client, "PING")
    assert isinstance(result.error, RedisConnectionError)
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text
    client.stop()


def test_a_tls_context_for_a_plain_address_is_refused(loop: EventLoop) -> None:
    with pytest.raises(ValueError, match="not rediss://"):
        RedisClient(loop, RedisAddress("127.0.0.1"), ssl_context=client_context())
