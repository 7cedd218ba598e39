"""``imreactor load --reconnect``: a msg_server killed mid-run loses nothing acknowledged.

Two msg_servers behind a route_server, clients placed by login_server. While pairs
send, one msg_server is killed with SIGKILL: its clients must log in again through
login_server (on the other one), catch up from history, and the run must still verify
every acknowledged message at every connection meant to get it, exactly once.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers.conftest import RunningSuite

from imreactor.client.load import LoadOptions, run_load

from .test_load import LOAD_USERS, logged_in_at, start_cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RunningSuite]:
    """A cluster of its own: this test kills one of its msg_servers."""
    yield from start_cluster(tmp_path / "cluster")


def test_clients_of_a_killed_msg_server_come_back_and_nothing_acked_is_lost(
    cluster: RunningSuite,
) -> None:
    killer = threading.Timer(1.5, cluster.kill, args=("msg_server1",))
    options = LoadOptions(
        login_url=cluster.http_url,
        users=LOAD_USERS,
        in_flight=2,
        rate=300.0,
        duration_s=4.0,
        reconnect=True,
        reconnect_jitter_s=0.5,
        login_retry_s=20.0,
    )
    killer.start()
    try:
        report = run_load(options)
    finally:
        killer.cancel()
    print(report.text())  # shown with -s
    assert report.ok, report.text()
    where = logged_in_at(cluster)
    assert where["msg_server1"], "login_server placed nobody on the killed server"
    # Everyone that was there is back (on the other server), and caught up.
    assert report.reconnects >= len(where["msg_server1"])
    assert report.logins_ok == LOAD_USERS
    assert report.expected_deliveries == report.deliveries > 0
    assert 0 < report.back_max_s < 20.0
