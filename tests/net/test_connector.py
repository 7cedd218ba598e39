"""The reconnecting connector on every backend: it connects once a server appears where
nothing listened, follows its backoff schedule (seeded jitter stays within bounds), starts
the schedule over after a connection that was established, and stop() stops it."""

from __future__ import annotations

import random
import socket

import pytest

from imreactor.net import Backoff, Connector, EventLoop, Listener

from .helpers import Collect, Recorder, RunUntil, run_for

pytestmark = pytest.mark.timeout(30)


def test_backoff_schedule_and_jitter_bounds() -> None:
    delays = (1.0, 2.0, 4.0)
    backoff = Backoff(delays, jitter=0.25, rng=random.Random(42).random)
    got = [backoff.delay() for _ in range(12)]
    bases = [1.0, 2.0, 4.0] + [4.0] * 9  # the last delay repeats
    for value, base in zip(got, bases, strict=True):
        assert base * 0.75 <= value <= base * 1.25
    assert len({round(v / b, 9) for v, b in zip(got, bases, strict=True)}) > 1, "no jitter"
    assert backoff.failures == 12
    again = Backoff(delays, jitter=0.25, rng=random.Random(42).random)
    assert [again.delay() for _ in range(12)] == got, "same seed, same schedule"

    backoff.reset()
    assert backoff.failures == 0
    assert 0.75 <= backoff.delay() <= 1.25

    assert Backoff(delays, jitter=0.5, rng=lambda: 0.0).delay() == 0.5
    assert Backoff(delays, jitter=0.5, rng=lambda: 0.5).delay() == 1.0
    assert Backoff(delays, jitter=0.0, rng=random.Random(1).random).delay() == 1.0
    for bad in ((), (1.0, -1.0)):
        with pytest.raises(ValueError):
            Backoff(bad)
    with pytest.raises(ValueError):
        Backoff(delays, jitter=1.0)


@pytest.fixture
def bound_socket() -> socket.socket:
    """A bound socket that listens only when the test says so (until then: refused)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def test_reconnects_once_the_server_appears(
    loop: EventLoop, run_until: RunUntil, bound_socket: socket.socket
) -> None:
    port = bound_socket.getsockname()[1]
    attempts = Collect(Recorder)
    connector = Connector(
        loop,
        "127.0.0.1",
        port,
        attempts,
        backoff=Backoff((0.02, 0.04), jitter=0.1, rng=random.Random(3).random),
    )
    connector.start()
    connector.start()  # idempotent
    run_until(lambda: connector.attempts >= 3, what="three refused attempts")
    assert connector.connection is None
    assert all(p.failed and not p.made for p in attempts.made if p.closed)

    accepted = Collect(Recorder)
    bound_socket.listen(16)
    bound_socket.setblocking(False)
    listener = Listener(loop, bound_socket, accepted)
    listener.start()
    run_until(lambda: connector.connection is not None and len(accepted) == 1)
    assert attempts.made[-1].made
    failures_before = connector.backoff.failures
    assert failures_before >= 3

    # The server drops the link: the connector starts its schedule over.
    accepted.made[0].connection().close()
    run_until(lambda: len(accepted) == 2, what="a reconnect after the link was lost")
    assert connector.backoff.failures == 1, "the schedule restarted after a success"
    run_until(lambda: connector.connection is not None)

    connector.stop()
    listener.close()


def test_stop_stops_reconnecting(
    loop: EventLoop, run_until: RunUntil, bound_socket: socket.socket
) -> None:
    port = bound_socket.getsockname()[1]
    with bound_socket:
        connector = Connector(
            loop, "127.0.0.1", port, Recorder, backoff=Backoff((0.01,), jitter=0.0)
        )
        connector.start()
        run_until(lambda: connector.attempts >= 2)
        connector.stop()
        assert not connector.running
        attempts = connector.attempts
        run_for(loop, 0.2)
        assert connector.attempts == attempts, "attempts went on after stop()"
        assert loop.pending_timers == 0


def test_stop_closes_an_established_link(loop: EventLoop, run_until: RunUntil) -> None:
    accepted = Collect(Recorder)
    server = loop.listen("127.0.0.1", 0, accepted)
    link = Collect(Recorder)
    connector = Connector(loop, "127.0.0.1", server.port, link, backoff=Backoff((0.01,)))
    connector.start()
    run_until(lambda: connector.connection is not None and len(accepted) == 1)
    connector.stop()
    run_until(lambda: link.made[0].lost and accepted.made[0].lost)
    run_for(loop, 0.1)
    assert connector.attempts == 1 and len(accepted) == 1, "no reconnect after stop()"


def test_a_failing_factory_is_retried(loop: EventLoop, run_until: RunUntil) -> None:
    accepted = Collect(Recorder)
    server = loop.listen("127.0.0.1", 0, accepted)
    calls = [0]

    def factory() -> Recorder:
        calls[0] += 1
        if calls[0] < 3:
            raise RuntimeError("not yet")
        return Recorder()

    connector = Connector(loop, "127.0.0.1", server.port, factory, backoff=Backoff((0.01,)))
    connector.start()
    run_until(lambda: connector.connection is not None)
    assert connector.attempts == 3
    connector.stop()
