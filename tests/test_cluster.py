"""``imreactor cluster init|invite|join``: a second machine's msg_server joins with one command.

The "machines" are data dirs on this host. Machine A runs ``cluster init`` and a suite;
machine B joins with the file A's ``invite`` wrote, and its msg_server (B's certificate
only, no CA key) serves logins through A's db_proxy_server and login_server. A msg_server
of another cluster is refused by the same servers. Every malformed join file, a second
``init``, and ``invite`` on a machine without the CA key are one line and exit status 2.
"""

from __future__ import annotations

import stat
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers.conftest import RunningSuite, free_ports, start_suite

from imreactor.client import Client
from imreactor.config import dump
from imreactor.pdu.proto import im_base_define_pb2 as base
from imreactor.servers.suite import DEMO_PASSWORD, Child, start_child, stop_children

pytestmark = pytest.mark.timeout(120)


def cluster(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imreactor", "cluster", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert (done.returncode, done.stderr) == (0, ""), done
    return done.stdout


def refused(done: subprocess.CompletedProcess[str], step: str, why: str) -> None:
    assert done.returncode == 2, done
    assert done.stderr.startswith(f"imreactor cluster {step}: "), done.stderr
    assert why in done.stderr and len(done.stderr.splitlines()) == 1, done.stderr


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_invite_join_make_private_files(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    out = ok(cluster("init", "--data-dir", str(a)))
    pki_a = a.resolve() / "pki"
    assert f'link_cert_file = "{pki_a / "link.pem"}"' in out
    assert mode(pki_a) == 0o700
    assert (mode(pki_a / "ca.key"), mode(pki_a / "link.key")) == (0o600, 0o600)
    join_file = tmp_path / "b.join"
    ok(cluster("invite", "--data-dir", str(a), "--name", "b", "--out", str(join_file)))
    assert mode(join_file) == 0o600
    bundle = join_file.read_text()
    assert (pki_a / "ca.key").read_text() not in bundle  # the CA key never leaves A
    out = ok(cluster("join", str(join_file), "--data-dir", str(b)))
    pki_b = b.resolve() / "pki"
    assert f'link_key_file = "{pki_b / "link.key"}"' in out
    assert (pki_b / "ca.pem").read_bytes() == (pki_a / "ca.pem").read_bytes()
    assert not (pki_b / "ca.key").exists()
    assert mode(pki_b / "link.key") == 0o600
    # Joining the same cluster again (a re-sent file) is fine; another cluster is not.
    ok(cluster("join", str(join_file), "--data-dir", str(b)))
    c = tmp_path / "c"
    ok(cluster("init", "--data-dir", str(c)))
    refused(cluster("join", str(join_file), "--data-dir", str(c)), "join", "another cluster")


def test_refusals_are_one_line(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    ok(cluster("init", "--data-dir", str(a)))
    refused(cluster("init", "--data-dir", str(a)), "init", "already has a cluster CA")
    join_file = tmp_path / "b.join"
    ok(cluster("invite", "--data-dir", str(a), "--name", "b", "--out", str(join_file)))
    refused(
        cluster("invite", "--data-dir", str(a), "--name", "b", "--out", str(join_file)),
        "invite",
        "exists",
    )
    refused(
        cluster("invite", "--data-dir", str(a), "--name", "../x", "--out", str(tmp_path / "x")),
        "invite",
        "use letters, digits",
    )
    ok(cluster("join", str(join_file), "--data-dir", str(b)))
    refused(
        cluster("invite", "--data-dir", str(b), "--name", "d", "--out", str(tmp_path / "d")),
        "invite",
        "no cluster CA key",
    )
    refused(cluster("join", str(tmp_path / "missing"), "--data-dir", str(b)), "join", "cannot read")
    blocks = join_file.read_text().split("-----END CERTIFICATE-----\n")
    other = tmp_path / "other"
    ok(cluster("init", "--data-dir", str(other)))
    foreign_ca = (other / "pki" / "ca.pem").read_text()
    bad = {
        "empty": "",
        "garbage": "hello\n",
        "order": blocks[2] + blocks[0] + "-----END CERTIFICATE-----\n" + blocks[1],
        "foreign-ca": foreign_ca + blocks[1] + "-----END CERTIFICATE-----\n" + blocks[2],
        "wrong-key": blocks[0]
        + "-----END CERTIFICATE-----\n"
        + blocks[1]
        + "-----END CERTIFICATE-----\n"
        + (other / "pki" / "link.key").read_text(),
    }
    expect = {
        "empty": "not a join file",
        "garbage": "not a join file",
        "order": "not a join file",
        "foreign-ca": "not a valid join file",
        "wrong-key": "the key is not the certificate's",
    }
    for name, text in bad.items():
        path = tmp_path / f"{name}.join"
        path.write_text(text)
        refused(
            cluster("join", str(path), "--data-dir", str(tmp_path / name)), "join", expect[name]
        )
        assert not (tmp_path / name / "pki" / "link.key").exists()


@pytest.fixture
def machine_a(tmp_path: Path) -> Iterator[RunningSuite]:
    ok(cluster("init", "--data-dir", str(tmp_path / "a")))
    suite = start_suite(tmp_path / "a", f"sqlite:///{tmp_path / 'im.db'}")
    try:
        yield suite
    finally:
        suite.stop()


def msg_server_on(machine: Path, a: RunningSuite, port: int) -> Child:
    """A msg_server in ``machine``'s data dir, linked to ``a``'s servers with its own files."""
    tables = tomllib.loads((a.layout.data_dir / "msg_server.toml").read_text())
    pki_dir = machine.resolve() / "pki"
    tables["msg"].update(
        port=port,
        link_ca_file=str(pki_dir / "ca.pem"),
        link_cert_file=str(pki_dir / "link.pem"),
        link_key_file=str(pki_dir / "link.key"),
    )
    config = machine / "msg_server.toml"
    config.write_text(dump(tables))
    return start_child("msg_server", "msg-server", config, machine)


def test_a_joined_machine_serves_and_a_foreign_one_is_refused(
    tmp_path: Path, machine_a: RunningSuite
) -> None:
    b, c = tmp_path / "b", tmp_path / "c"
    join_file = tmp_path / "b.join"
    ok(cluster("invite", "--data-dir", str(tmp_path / "a"), "--name", "b", "--out", str(join_file)))
    ok(cluster("join", str(join_file), "--data-dir", str(b)))
    ok(cluster("init", "--data-dir", str(c)))  # a cluster of its own
    port_b, port_c = free_ports(2)
    children = [msg_server_on(b, machine_a, port_b)]
    try:
        with (
            Client.connect("127.0.0.1", port_b) as alice,
            Client.connect("127.0.0.1", machine_a.layout.msg_ports[0]) as bob,
        ):
            alice.login("alice", DEMO_PASSWORD)  # validated by A's db_proxy over B's link
            bob.login("bob", DEMO_PASSWORD)
            ack = alice.send_text(bob.user_id, "from machine b")  # stored through B's link
            # No route_server here: bob on A finds it in the history A's db_proxy stored.
            newest = bob.history(alice.user_id, count=1).msg_list
            assert [(m.msg_id, m.msg_data) for m in newest] == [(ack.msg_id, b"from machine b")]
        children.append(msg_server_on(c, machine_a, port_c))
        with Client.connect("127.0.0.1", port_c) as mallory:
            res = mallory.login("alice", DEMO_PASSWORD, check=False)
            # No db_proxy_server talks to a msg_server of another cluster.
            assert res.result_code == base.REFUSE_REASON_NO_DB_SERVER
        log = machine_a.log_text("db_proxy_server")
        assert "TLS handshake with 127.0.0.1:" in log
    finally:
        stop_children(children)
