"""``imreactor load --processes N``: the split, real multi-process runs, and the merge.

The split must keep every pair inside one process and hand out pairs, rate and
count in proportion; a run over two processes against a real cluster must verify
clean with each pair still split over the two msg_servers and each process's
connections from its own loopback source address; a fault injected by a stand-in
msg_server must show up in the merged report; a child that dies must fail the run.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from servers.conftest import RunningSuite

from imreactor.cli import main as cli_main
from imreactor.client.load import LoadOptions
from imreactor.client.load.multi import _Child, merge, run_processes, split

from .test_load import (
    LOAD_USERS,
    FakeFactory,
    fake,  # noqa: F401 (fixtures used here)
    load_cluster,  # noqa: F401
    logged_in_at,
    msg_servers,
    user_ids,
)


def test_split_keeps_pairs_whole_and_shares_out_the_work() -> None:
    shares = split(LoadOptions(users=11, pairs=4, rate=100.0, count=9), 3)
    assert [(s.first_user, s.users, s.pairs) for s in shares] == [(0, 4, 2), (4, 4, 1), (8, 3, 1)]
    assert [s.rate for s in shares] == [50.0, 25.0, 25.0]
    assert [s.count for s in shares] == [3, 3, 3]
    # Every user once, in order; each slice starts on a pair.
    names = [n for s in shares for n in s.user_names()]
    assert names == [f"load{i}" for i in range(11)]
    assert all(s.first_user % 2 == 0 for s in shares)
    # Loopback targets: one source address per process; otherwise the OS picks.
    assert [s.source_host for s in shares] == ["127.0.1.1", "127.0.1.2", "127.0.1.3"]
    remote = split(LoadOptions(login_url="http://192.0.2.1:8080", users=4), 2)
    assert [s.source_host for s in remote] == [None, None]
    given = split(LoadOptions(msg_servers=["127.0.0.1:1"], users=4, source_host="127.0.0.9"), 2)
    assert [s.source_host for s in given] == ["127.0.0.9", "127.0.0.9"]


@pytest.mark.parametrize(
    "options,processes,message",
    [
        (LoadOptions(users=4), 3, "--pairs (2) must be at least --processes (3)"),
        (LoadOptions(users=8, count=1), 2, "--count (1) must be at least --processes"),
        (LoadOptions(group_size=4), 2, "--processes is for 1:1 runs"),
        (LoadOptions(echo="127.0.0.1:1", users=4), 2, "--processes is for 1:1 runs"),
        (LoadOptions(users=4), 0, "--processes must be in 1..64"),
        (LoadOptions(users=4, first_user=1), 1, "first_user must be even"),
    ],
)
def test_split_refuses_what_cannot_be_split(
    options: LoadOptions, processes: int, message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        split(options, processes)


def test_two_processes_against_a_cluster_verify_clean(
    load_cluster: RunningSuite,  # noqa: F811
) -> None:
    calls: list[str] = []
    report = run_processes(
        LoadOptions(
            msg_servers=msg_servers(load_cluster),
            users=LOAD_USERS,
            devices=2,
            in_flight=4,
            count=400,
        ),
        2,
        on_ready=lambda: calls.append("ready"),
        on_done=lambda: calls.append("done"),
    )
    assert report.ok, report.text()
    assert calls == ["ready", "done"]
    assert report.target.endswith("from 2 processes")
    assert (report.users, report.connections, report.logins_ok) == (12, 24, 24)
    assert (report.senders, report.sent, report.acked) == (6, 400, 400)
    assert report.expected_deliveries == report.deliveries == 400 * 3
    assert report.ack_latency.count == 400 and report.delivery_latency.count == 1200
    # User i went to server i mod 2 whichever process it was in.
    where = logged_in_at(load_cluster)
    ids = user_ids(load_cluster, [f"load{i}" for i in range(LOAD_USERS)])
    assert set(ids[0::2]) <= where["msg_server1"] and set(ids[1::2]) <= where["msg_server2"]
    # Each process connected from its own source address.
    logs = load_cluster.log_text("msg_server1") + load_cluster.log_text("msg_server2")
    assert "peer=('127.0.1.1'" in logs and "peer=('127.0.1.2'" in logs


def test_a_fault_in_one_process_fails_the_merged_run(
    fake: FakeFactory,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = fake(fault="drop", fault_at=7)
    argv = ["load", "--login-url", server.login_url, "--users", "8", "--processes", "2"]
    code = cli_main([*argv, "--count", "20", "--drain", "0.5", "--json", "--no-progress"])
    assert code == 1
    report = json.loads(capsys.readouterr().out)
    assert report["errors"]["losses"] == 1 and not report["ok"]
    assert report["acked"] == 20 and report["deliveries"] == 19
    assert any(p.startswith("process ") and "losses" in p for p in report["problems"])


def test_a_child_that_dies_fails_the_run() -> None:
    options = LoadOptions(users=4)
    shares = split(options, 2)
    dead = subprocess.Popen(
        [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"],
        stdout=subprocess.PIPE,
        text=True,
    )
    dead.wait()
    report = merge(options, [_Child(0, shares[0], dead, gone=True, lines=["boom"])])
    assert not report.ok
    assert report.errors["process_failures"] == 1
    assert "exited 3: boom" in report.problems[0]


def test_cli_refuses_an_impossible_split(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["load", "--users", "4", "--processes", "3", "--no-progress"]) == 2
    assert "--pairs (2) must be at least --processes (3)" in capsys.readouterr().err
