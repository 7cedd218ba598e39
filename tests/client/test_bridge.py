"""``LoopBridge`` on a real loop thread: calls and their errors, a stuck loop's bare
``TimeoutError``, waits failed at close, stop; and a request nobody answers raising
``ClientError`` from a ``Client`` connected to a silent listener."""

from __future__ import annotations

import concurrent.futures
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from imreactor.client import Client, ClientError
from imreactor.client.bridge import LoopBridge
from imreactor.pdu.imconn import ResponseCallback
from imreactor.pdu.proto import im_message_pb2 as msg_pb

WAIT_S = 5.0


@pytest.fixture
def bridge() -> Iterator[LoopBridge]:
    b = LoopBridge(thread_name="test-bridge")
    yield b
    b.close_waits()
    b.stop(lambda: None)


def test_call_runs_on_the_loop_thread_and_passes_errors_through(bridge: LoopBridge) -> None:
    assert bridge.call(lambda: threading.current_thread().name, WAIT_S) == "test-bridge"

    def broken() -> None:
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        bridge.call(broken, WAIT_S)


def test_answer_turns_every_failure_into_a_client_error(bridge: LoopBridge) -> None:
    assert bridge.answer(lambda done: done("yes", None), WAIT_S) == "yes"
    with pytest.raises(ClientError, match="no response within"):
        bridge.answer(lambda done: done(None, TimeoutError("no response within 1 s")), WAIT_S)

    def raising(done: ResponseCallback) -> None:
        raise ConnectionError("not connected")

    with pytest.raises(ClientError, match="not connected"):
        bridge.answer(raising, WAIT_S)


def test_a_loop_that_does_not_answer_is_a_bare_timeout(bridge: LoopBridge) -> None:
    fut: concurrent.futures.Future[None] = concurrent.futures.Future()
    with pytest.raises(TimeoutError) as err:
        bridge.wait(fut, 0.05)
    assert not isinstance(err.value, ClientError)


def test_close_waits_fails_the_waits_under_way_and_every_later_one(bridge: LoopBridge) -> None:
    failed: list[BaseException] = []
    fut: concurrent.futures.Future[None] = concurrent.futures.Future()

    def waiter() -> None:
        try:
            bridge.wait(fut, WAIT_S)
        except BaseException as exc:
            failed.append(exc)

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.05)  # let the wait begin
    started = time.monotonic()
    assert bridge.close_waits()
    t.join(WAIT_S)
    assert time.monotonic() - started < WAIT_S / 2
    assert [str(e) for e in failed] == ["client closed"]
    assert isinstance(failed[0], ClientError)
    assert bridge.closing and not bridge.close_waits()
    with pytest.raises(ClientError, match="client closed"):
        bridge.call(lambda: None, WAIT_S)


def test_stop_runs_last_on_the_loop_then_ends_its_thread() -> None:
    b = LoopBridge(thread_name="test-bridge-stop")
    ran_on: list[str] = []
    b.stop(lambda: ran_on.append(threading.current_thread().name))
    assert ran_on == ["test-bridge-stop"]
    b.stop(lambda: ran_on.append("again"))  # the thread has ended: nothing runs
    assert ran_on == ["test-bridge-stop"]


def test_a_request_nobody_answers_raises_client_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        client = Client.connect("127.0.0.1", port, timeout_s=WAIT_S)
        try:
            req = msg_pb.IMUnreadMsgCntReq(user_id=1)
            with pytest.raises(ClientError, match="no response within") as err:
                client.request(req, msg_pb.IMUnreadMsgCntRsp, timeout_s=0.2)
            assert not isinstance(err.value, TimeoutError)
        finally:
            client.close()
