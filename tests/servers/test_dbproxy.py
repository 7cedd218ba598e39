"""db_proxy_server's login path and deadlines, in process, over real loopback sockets.

A :class:`DbProxyServer` on a real SQLite file and a real event loop; a msg_server's side
is an :class:`ImConnection` with the server-link policy (its requests carry their time
budget). Covered:

- a first login runs a full password check, a returning one is answered from the
  credential cache without one; a wrong password for a cached user is a full check and a
  refusal; a password change (from another process's storage object, as ``imreactor user``
  would) and a disabled account take effect on the very next login; an unknown name costs
  a check too;
- a login whose budget passed while it waited for the hash pool is dropped unstarted and
  never answered; the same for an ordinary query behind a busy worker;
- a full hash pool answers "busy" (result 3) at once;
- a malformed password (not an MD5) is an ordinary refusal.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from imreactor.net import EventLoop
from imreactor.pdu.imconn import SERVER_LINK, Dispatcher, ImConnection
from imreactor.pdu.proto import im_base_define_pb2 as base
from imreactor.pdu.proto import im_buddy_pb2 as buddy
from imreactor.pdu.proto import im_server_pb2 as server_pb
from imreactor.servers.dbproxy.config import DbProxyConfig
from imreactor.servers.dbproxy.server import DbProxyServer
from imreactor.storage import PasswordHasher, Storage, open_storage

pytestmark = pytest.mark.timeout(60)

FAST = PasswordHasher(n=2**4, r=1, p=1)
WAIT_S = 10.0


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


class CountingStore:
    """Wraps a storage: counts full password checks, can hold them at a gate."""

    def __init__(self, store: Storage) -> None:
        self._store = store
        self.checks = 0
        self.gate: threading.Event | None = None
        self.lock = threading.Lock()

    def check_password(self, md5_hex: str, stored: str | None) -> bool:
        with self.lock:
            self.checks += 1
        if self.gate is not None:
            self.gate.wait(WAIT_S)
        return self._store.check_password(md5_hex, stored)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


class Harness:
    def __init__(self, path: Path, **config: Any) -> None:
        self.url = f"sqlite:///{path}"
        self.loop = EventLoop()
        self.store = CountingStore(open_storage(self.url, hasher=FAST))
        cfg = DbProxyConfig(listen_host="127.0.0.1", port=0, database=self.url, **config)
        self.server = DbProxyServer(self.loop, cfg, store=self.store)
        self.server.start()
        self.link = ImConnection(Dispatcher(), policy=SERVER_LINK)
        self.loop.connect("127.0.0.1", self.server.port, self.link)
        self.run_until(lambda: getattr(self.link, "conn", None) is not None, "connected")

    def run_until(self, predicate: Callable[[], object], what: str = "") -> None:
        deadline = time.monotonic() + WAIT_S
        while not predicate():
            assert time.monotonic() < deadline, f"not reached: {what or predicate}"
            self.loop.run_once(0.01)

    def run_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.loop.run_once(0.01)

    def validate(
        self, name: str, password: str, timeout_s: float = WAIT_S
    ) -> list[tuple[Any, BaseException | None]]:
        """Send one IMValidateReq; the list gets its (answer, exc) when it comes."""
        got: list[tuple[Any, BaseException | None]] = []
        req = server_pb.IMValidateReq(user_name=name, password=password, attach_data=b"x")
        self.link.request(
            req,
            lambda r, e: got.append((r, e)),
            timeout_s=timeout_s,
            response=server_pb.IMValidateRsp,
        )
        return got

    def login(self, name: str, password: str) -> Any:
        got = self.validate(name, password)
        self.run_until(lambda: got, "the validate answer")
        [(rsp, exc)] = got
        assert exc is None, exc
        assert rsp.attach_data == b"x"
        return rsp

    def close(self) -> None:
        if self.store.gate is not None:
            self.store.gate.set()
        self.link.conn.close()
        self.server.close()
        self.loop.close()


@pytest.fixture
def make_harness(tmp_path: Path) -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(**config: Any) -> Harness:
        h = Harness(tmp_path / f"db{len(made)}.sqlite", **config)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def test_a_returning_login_is_answered_without_a_hash(make_harness: Callable[..., Harness]) -> None:
    h = make_harness()
    user = h.store.add_user("alice", md5("pw"))
    first = h.login("alice", md5("pw"))
    assert first.result_code == 0 and first.user_info.user_id == user.user_id
    assert h.store.checks == 1
    for _ in range(5):
        assert h.login("alice", md5("pw")).result_code == 0
    assert h.store.checks == 1, "a returning login ran a full hash"
    assert h.server.credentials.hits == 5
    # A wrong password for a cached user is a full check, and refused.
    wrong = h.login("alice", md5("guess"))
    assert wrong.result_code == base.REFUSE_REASON_DB_VALIDATE_FAILED
    assert h.store.checks == 2
    # An unknown name costs a check as well (the answer does not tell names apart).
    assert h.login("nobody", md5("pw")).result_code == base.REFUSE_REASON_DB_VALIDATE_FAILED
    assert h.store.checks == 3
    assert h.login("alice", "not an md5").result_code == base.REFUSE_REASON_DB_VALIDATE_FAILED


def test_a_password_change_elsewhere_takes_effect_at_once(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness()
    user = h.store.add_user("bob", md5("old"))
    assert h.login("bob", md5("old")).result_code == 0
    # Another process (imreactor user passwd) changes it in the database directly.
    other = open_storage(h.url, hasher=FAST)
    try:
        assert other.change_password(user.user_id, md5("new"))
    finally:
        other.close()
    assert h.login("bob", md5("old")).result_code == base.REFUSE_REASON_DB_VALIDATE_FAILED
    assert h.login("bob", md5("new")).result_code == 0
    assert h.store.checks == 3  # old (cold), old (stale: full check, refused), new (cold)
    assert h.login("bob", md5("new")).result_code == 0
    assert h.store.checks == 3


def test_a_disabled_account_is_refused_even_when_cached(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness()
    user = h.store.add_user("carol", md5("pw"))
    assert h.login("carol", md5("pw")).result_code == 0
    h.store.set_disabled(user.user_id, True)
    refused = h.login("carol", md5("pw"))
    assert refused.result_code == base.REFUSE_REASON_DB_VALIDATE_FAILED
    assert refused.result_string == "account disabled"
    # Only who knows the password learns the account is disabled.
    assert h.login("carol", md5("guess")).result_string != "account disabled"
    h.store.set_disabled(user.user_id, False)
    assert h.login("carol", md5("pw")).result_code == 0


def test_a_login_past_its_budget_is_dropped_unstarted(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness(hash_threads=1)
    h.store.add_user("dave", md5("pw"))
    h.store.add_user("erin", md5("pw"))
    h.store.gate = threading.Event()
    blocking = h.validate("dave", md5("pw"))  # holds the one hash thread at the gate
    h.run_until(lambda: h.store.checks == 1, "the first check started")
    late = h.validate("erin", md5("pw"), timeout_s=0.2)  # waits behind it, gives up
    h.run_until(lambda: late, "the second login timed out at the sender")
    assert isinstance(late[0][1], TimeoutError)
    h.store.gate.set()
    h.run_until(lambda: blocking, "the first answer")
    h.run_until(lambda: h.server.expired == 1, "the second was dropped")
    assert h.store.checks == 1, "work past its deadline was started"
    # Nothing comes back for it: a later request round-trips and no late answer arrived.
    assert h.login("dave", md5("pw")).result_code == 0
    assert h.link.late_answers == 0


def test_a_query_past_its_budget_is_dropped_unstarted(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness(threads=1)
    user = h.store.add_user("frank", md5("pw"))
    gate = threading.Event()
    h.server.pool.submit(gate.wait, WAIT_S)  # the one worker is busy
    got: list[tuple[Any, BaseException | None]] = []
    h.link.request(
        buddy.IMUsersInfoReq(user_id=user.user_id, user_id_list=[user.user_id]),
        lambda r, e: got.append((r, e)),
        timeout_s=0.2,
    )
    h.run_until(lambda: got, "the query timed out at the sender")
    gate.set()
    h.run_until(lambda: h.server.expired == 1, "the query was dropped")
    answered: list[tuple[Any, BaseException | None]] = []
    h.link.request(
        buddy.IMUsersInfoReq(user_id=user.user_id, user_id_list=[user.user_id]),
        lambda r, e: answered.append((r, e)),
        timeout_s=WAIT_S,
    )
    h.run_until(lambda: answered, "a fresh query is answered")
    assert answered[0][1] is None
    assert h.link.late_answers == 0


def test_a_full_hash_pool_answers_busy_at_once(make_harness: Callable[..., Harness]) -> None:
    h = make_harness(hash_threads=1, hash_max_pending=1)
    for name in ("gina", "hank"):
        h.store.add_user(name, md5("pw"))
    h.store.gate = threading.Event()
    first = h.validate("gina", md5("pw"))
    h.run_until(lambda: h.store.checks == 1, "the first check started")
    busy = h.login("hank", md5("pw"))
    assert busy.result_code == base.REFUSE_REASON_NO_DB_SERVER
    assert busy.result_string == "server busy"
    assert h.server.busy == 1
    h.store.gate.set()
    h.run_until(lambda: first, "the first answer")
    assert first[0][0].result_code == 0
    assert h.login("hank", md5("pw")).result_code == 0  # busy is not sticky
