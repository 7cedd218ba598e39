"""``imreactor config import``: TeamTalk .conf files to TOML; refusals; servers run on the output.

The sample files follow the ones shipped with the original servers (tabs, trailing
comments, commented-out pairs, Chinese comments). The last test imports a login_server,
db_proxy_server and msg_server file with free ports, starts the three servers from the
output and logs a client in through them.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from imreactor.client import Client, ClientError
from imreactor.config import load
from imreactor.net import parse_address
from imreactor.servers.confimport import (
    ROLES,
    ConfImportError,
    import_conf,
    parse_conf,
    render,
)
from imreactor.servers.dbproxy.config import DbProxyConfig
from imreactor.servers.login.config import LoginConfig
from imreactor.servers.msg.config import MsgConfig
from imreactor.servers.route.config import RouteConfig
from imreactor.servers.suite import start_child, stop_children

from .conftest import free_ports

MSG_CONF = """\
ListenIP=0.0.0.0
ListenPort=8000

ConcurrentDBConnCnt=1
DBServerIP1=127.0.0.1
DBServerPort1=10600
DBServerIP2=127.0.0.1
DBServerPort2=10600

LoginServerIP1=localhost
LoginServerPort1=8100
#LoginServerIP2=localhost
#LoginServerPort2=8101

RouteServerIP1=localhost
RouteServerPort1=8200

PushServerIP1=localhost
PushServerPort1=8500

FileServerIP1=localhost
FileServerPort1=8601

IpAddr1=192.168.226.128\t#电信IP
IpAddr2=192.168.226.129\t#网通IP
MaxConnCnt=100000

# AES key
aesKey=12345678901234567890123456789012
"""

LOGIN_CONF = """\
# config format spec
# this is a commet

ClientListenIP=0.0.0.0\t\t# can use multiple ip, seperate by ';'
ClientPort=8008
HttpListenIP=0.0.0.0
HttpPort=8080
MsgServerListenIP=0.0.0.0 \t# can use multiple ip, seperate by ';'
MsgServerPort=8100

msfs=http://192.168.226.128:8700/

discovery=http://127.0.0.1/api/discovery?v=1
"""

ROUTE_CONF = """\
#========================================================================
ListenIP=0.0.0.0\t\t\t# Listening IP
ListenMsgPort=8200\t\t\t# Listening Port for MsgServer
"""

# auto_setup's msfs.conf, as the original ships it.
MSFS_CONF = """\
ListenIP=0.0.0.0\t\t#可以监听多个IP,用;分割
ListenPort=8700
BaseDir=./tmp
FileCnt=0
FilesPerDir=30000
GetThreadCount=32
PostThreadCount=1
"""

DBPROXY_CONF = """\
ListenIP=0.0.0.0
ListenPort=10600
ThreadNum=48\t\t# double the number of CPU core
MsfsSite=127.0.0.1

#configure for mysql
DBInstances=teamtalk_master,teamtalk_slave
teamtalk_master_host=127.0.0.1
teamtalk_master_port=3306
teamtalk_master_dbname=teamtalk
teamtalk_master_username=test
teamtalk_master_password=12345
teamtalk_slave_host=127.0.0.1
teamtalk_slave_password=12345

#configure for unread
CacheInstances=unread,group_set
#未读消息计数器的redis
unread_host=127.0.0.1
unread_port=6379
group_set_db=1

#AES 密钥
aesKey=12345678901234567890123456789012
"""


def imreactor(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imreactor", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
    )


def import_file(tmp_path: Path, name: str, text: str | bytes, role: str) -> str:
    """``imreactor config import`` of ``text`` as the file ``name``; must succeed. Its stdout."""
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    res = imreactor("config", "import", path.name, "--role", role, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    return res.stdout


def not_imported(output: str) -> dict[str, str]:
    """``{key: reason}`` of the output's "Not imported" comment."""
    found = {}
    for line in output.splitlines():
        m = re.match(r"#   (\w+)=.*?  -- (.*)$", line)
        if m:
            found[m.group(1)] = m.group(2)
    return found


# -- the three originals --------------------------------------------------------------------


def test_msg_server_conf(tmp_path: Path) -> None:
    out = import_file(tmp_path, "msgserver.conf", MSG_CONF, "msg")
    assert tomllib.loads(out) == {
        "msg": {
            "listen_host": "0.0.0.0",
            "port": 8000,
            "ip1": "192.168.226.128",
            "ip2": "192.168.226.129",
            "max_conn_cnt": 100000,
            "db_proxies": ["127.0.0.1:10600"],
            "login_servers": ["localhost:8100"],
            "route_servers": ["localhost:8200"],
        }
    }
    (tmp_path / "msg.toml").write_text(out)
    config = load(MsgConfig, tmp_path / "msg.toml", "msg")
    assert config.db_proxies == ["127.0.0.1:10600"]
    assert config.msg_burst == MsgConfig().msg_burst  # what the file does not set: defaults
    ignored = not_imported(out)
    assert set(ignored) == {
        "ConcurrentDBConnCnt",
        "DBServerIP2",
        "DBServerPort2",
        "PushServerIP1",
        "PushServerPort1",
        "FileServerIP1",
        "FileServerPort1",
        "aesKey",
    }
    assert "repeats 127.0.0.1:10600" in ignored["DBServerIP2"]
    assert "no push_server" in ignored["PushServerIP1"]
    assert "12345678901234567890123456789012" not in out  # the AES key is not echoed
    assert "#   aesKey=(not shown)" in out


def test_login_server_conf(tmp_path: Path) -> None:
    out = import_file(tmp_path, "loginserver.conf", LOGIN_CONF, "login")
    assert tomllib.loads(out)["login"] == {
        "listen_host": "0.0.0.0",
        "client_port": 8008,
        "http_port": 8080,
        "msg_server_port": 8100,
        "msfs_prior": "http://192.168.226.128:8700/",
        "msfs_backup": "http://192.168.226.128:8700/",
        "discovery": "http://127.0.0.1/api/discovery?v=1",
    }
    assert "Not imported" not in out
    (tmp_path / "login.toml").write_text(out)
    assert load(LoginConfig, tmp_path / "login.toml", "login").client_port == 8008


def test_route_server_conf(tmp_path: Path) -> None:
    out = import_file(tmp_path, "routeserver.conf", ROUTE_CONF, "route")
    assert tomllib.loads(out)["route"] == {"listen_host": "0.0.0.0", "port": 8200}
    assert "Not imported" not in out
    (tmp_path / "route.toml").write_text(out)
    assert load(RouteConfig, tmp_path / "route.toml", "route").port == 8200


def test_msfs_conf(tmp_path: Path) -> None:
    out = import_file(tmp_path, "msfs.conf", MSFS_CONF, "msfs")
    assert tomllib.loads(out)["msfs"] == {
        "listen_host": "0.0.0.0",
        "port": 8700,
        "store_dir": "./tmp",
    }
    assert set(not_imported(out)) == {"FileCnt", "FilesPerDir", "GetThreadCount", "PostThreadCount"}


def test_db_proxy_server_conf(tmp_path: Path) -> None:
    out = import_file(tmp_path, "dbproxyserver.conf", DBPROXY_CONF, "dbproxy")
    assert tomllib.loads(out)["dbproxy"] == {
        "listen_host": "0.0.0.0",
        "port": 10600,
        "threads": 48,
    }
    ignored = not_imported(out)
    mysql = [k for k, why in ignored.items() if why.startswith("MySQL")]
    redis = [k for k, why in ignored.items() if why.startswith("redis")]
    assert mysql == ["DBInstances"] + [
        f"teamtalk_{k}"
        for k in (
            "master_host",
            "master_port",
            "master_dbname",
            "master_username",
            "master_password",
            "slave_host",
            "slave_password",
        )
    ]
    assert redis == ["CacheInstances", "unread_host", "unread_port", "group_set_db"]
    assert set(ignored) == {*mysql, *redis, "MsfsSite", "aesKey"}
    assert "12345" not in out.replace("12345678901234567890123456789012", "")  # no password
    assert "12345678901234567890123456789012" not in out
    assert '# Set database = "postgresql://' in out
    (tmp_path / "db.toml").write_text(out)
    assert load(DbProxyConfig, tmp_path / "db.toml", "dbproxy").threads == 48


# -- reading the format ---------------------------------------------------------------------


def test_parse_conf_reads_lines_as_the_original_does() -> None:
    data = (
        b"# comment\n"
        b"  \t\n"
        b"Key1 = some value \t# trailing comment\r\n"
        b"Url=http://h/p?a=b&c=d\n"
        b"Empty=\n"
        b"Cut=abc#def\n"
        b"# \xc4\xe3\xba\xc3 (GBK in a comment)\n"
    )
    entries = parse_conf(data, "x.conf")
    assert [(e.key, e.value, e.line) for e in entries] == [
        ("Key1", "some value", 3),
        ("Url", "http://h/p?a=b&c=d", 4),
        ("Empty", "", 5),
        ("Cut", "abc", 6),
    ]


def test_numbered_pairs_end_at_the_first_gap(tmp_path: Path) -> None:
    conf = (
        "DBServerIP1=10.0.0.1\nDBServerPort1=10600\n"
        "DBServerIP2=10.0.0.2\n"  # no DBServerPort2: the list ends at 1
        "DBServerIP3=10.0.0.3\nDBServerPort3=10600\n"
        "LoginServerIP1=::1\nLoginServerPort1=8100\n"
        "LoginServerIP2=10.0.0.9\nLoginServerPort2=8100\n"
    )
    out = import_file(tmp_path, "m.conf", conf, "msg")
    table = tomllib.loads(out)["msg"]
    assert table["db_proxies"] == ["10.0.0.1:10600"]
    assert table["login_servers"] == ["[::1]:8100", "10.0.0.9:8100"]
    assert parse_address(table["login_servers"][0], 1) == ("::1", 8100)
    ignored = not_imported(out)
    assert set(ignored) == {"DBServerIP2", "DBServerIP3", "DBServerPort3"}
    assert "ends at 1" in ignored["DBServerIP3"]


def test_missing_ip_addr2_is_ip_addr1_and_listen_lists_give_the_first(tmp_path: Path) -> None:
    out = import_file(tmp_path, "m.conf", "ListenIP=10.0.0.1;10.0.0.2\nIpAddr1=1.2.3.4\n", "msg")
    table = tomllib.loads(out)["msg"]
    assert table == {"listen_host": "10.0.0.1", "ip1": "1.2.3.4", "ip2": "1.2.3.4"}
    assert "imreactor listens on one address (10.0.0.1)" in not_imported(out)["ListenIP"]


def test_login_listen_addresses_that_differ(tmp_path: Path) -> None:
    conf = "ClientListenIP=10.0.0.1\nHttpListenIP=10.0.0.1\nMsgServerListenIP=10.0.0.2\n"
    out = import_file(tmp_path, "l.conf", conf, "login")
    assert tomllib.loads(out)["login"] == {"listen_host": "10.0.0.1"}
    assert not_imported(out) == {
        "MsgServerListenIP": "login_server listens on one address (10.0.0.1)"
    }


def test_unknown_keys_are_listed_not_dropped(tmp_path: Path) -> None:
    out = import_file(tmp_path, "m.conf", "ListenPort=8000\nListenMsgPort=8200\nFoo=1\n", "msg")
    assert not_imported(out) == {
        "ListenMsgPort": "not a msg_server setting",
        "Foo": "not a msg_server setting",
    }


def test_render_is_loadable_for_every_role(tmp_path: Path) -> None:
    samples = {
        "msg": MSG_CONF,
        "login": LOGIN_CONF,
        "route": ROUTE_CONF,
        "dbproxy": DBPROXY_CONF,
        "msfs": MSFS_CONF,
    }
    assert set(samples) == set(ROLES)
    for role, text in samples.items():
        path = tmp_path / f"{role}.toml"
        path.write_text(render(import_conf(text.encode(), role, f"{role}.conf")))
        assert isinstance(load(ROLES[role], path, role), ROLES[role])


# -- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,role,message",
    [
        (b"ListenPort 8000\n", "msg", "bad.conf:1: expected key=value, got 'ListenPort 8000'"),
        (b"# x\n=8000\n", "msg", "bad.conf:2: '' is not a key name"),
        (b"Listen Port=8000\n", "msg", "bad.conf:1: 'Listen Port' is not a key name"),
        (b"ListenPort=1\n\nListenPort=2\n", "msg", "bad.conf:3: ListenPort is given again"),
        (b"ListenPort=80x\n", "msg", "bad.conf:1: ListenPort='80x': not a number"),
        (b"ListenPort=-1\n", "msg", "bad.conf:1: ListenPort='-1': not a number"),
        (b"ListenPort=0\n", "msg", "ListenPort='0': out of range (1..65535)"),
        (b"ListenPort=65536\n", "msg", "ListenPort='65536': out of range (1..65535)"),
        (b"ListenPort=\n", "msg", "ListenPort='': not a number"),
        (b"MaxConnCnt=0\n", "msg", "MaxConnCnt='0': out of range (>= 1)"),
        (b"ThreadNum=many\n", "dbproxy", "bad.conf:1: ThreadNum='many': not a number"),
        (b"IpAddr1=a b\n", "msg", "IpAddr1='a b': not a host name or address"),
        (b"IpAddr1=a;b\n", "msg", "IpAddr1='a;b': one address expected"),
        (b"DBServerIP1=h\nDBServerPort1=x\n", "msg", "bad.conf:2: DBServerPort1='x'"),
        (b"ListenIP=\xc4\xe3\n", "msg", "bad.conf:1: not UTF-8 text"),
        (LOGIN_CONF.encode(), "msg", "nothing in it maps to [msg]; is it a msg_server file?"),
        (b"# only comments\n", "dbproxy", "nothing in it maps to [dbproxy]"),
        (b"ListenIP=0.0.0.0\nListenMsgPort=x\n", "route", "bad.conf:2: ListenMsgPort='x'"),
    ],
)
def test_refusals_name_file_and_line(tmp_path: Path, text: bytes, role: str, message: str) -> None:
    with pytest.raises(ConfImportError) as err:
        import_conf(text, role, "bad.conf")
    assert message in str(err.value)
    # The command says the same in one line, and prints no TOML.
    (tmp_path / "bad.conf").write_bytes(text)
    res = imreactor("config", "import", "bad.conf", "--role", role, cwd=tmp_path)
    assert (res.returncode, res.stdout) == (1, "")
    assert res.stderr == f"imreactor config import: {err.value}\n"


def test_unknown_role_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfImportError, match="unknown role 'file'"):
        import_conf(b"ListenIP=x\n", "file")
    (tmp_path / "r.conf").write_text("ListenIP=0.0.0.0\nListenMsgPort=8200\n")
    res = imreactor("config", "import", "r.conf", "--role", "file", cwd=tmp_path)
    assert res.returncode == 2 and "invalid choice: 'file'" in res.stderr
    res = imreactor("config", "import", "r.conf", cwd=tmp_path)
    assert res.returncode == 2 and "--role" in res.stderr
    res = imreactor("config", "import", "none.conf", "--role", "msg", cwd=tmp_path)
    assert (res.returncode, res.stderr) == (
        1,
        "imreactor config import: none.conf: No such file or directory\n",
    )


# -- servers run on imported files ------------------------------------------------------------


def test_servers_start_from_imported_files_and_a_client_logs_in(tmp_path: Path) -> None:
    http, login, msg, db = free_ports(4)
    confs = {
        "db_proxy_server": (
            "dbproxy",
            f"ListenIP=127.0.0.1\nListenPort={db}\nThreadNum=2\nDBInstances=m\nm_host=x\n",
        ),
        "login_server": (
            "login",
            "ClientListenIP=127.0.0.1\nHttpListenIP=127.0.0.1\nMsgServerListenIP=127.0.0.1\n"
            f"ClientPort={free_ports(1)[0]}\nHttpPort={http}\nMsgServerPort={login}\n",
        ),
        "msg_server": (
            "msg",
            f"ListenIP=127.0.0.1\nListenPort={msg}\nIpAddr1=127.0.0.1\nMaxConnCnt=10\n"
            f"DBServerIP1=127.0.0.1\nDBServerPort1={db}\n"
            f"LoginServerIP1=127.0.0.1\nLoginServerPort1={login}\n"
            "PushServerIP1=127.0.0.1\nPushServerPort1=8500\n",
        ),
    }
    for name, (role, text) in confs.items():
        (tmp_path / f"{name}.toml").write_text(import_file(tmp_path, f"{name}.conf", text, role))
    # db_proxy_server's database is the default, sqlite:///data/imreactor.db, relative to
    # its working directory (tmp_path).
    res = imreactor("user", "add", "alice", "--password", "pw", "--data-dir", "data", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    children = []
    try:
        for name in confs:  # db_proxy_server first: msg_server needs it
            command = name.replace("_", "-")  # db-proxy-server, login-server, msg-server
            children.append(start_child(name, command, tmp_path / f"{name}.toml", tmp_path))
        deadline = time.monotonic() + 15
        while True:  # until msg_server has registered with login_server and linked to db_proxy
            try:
                c = Client.via_login_server(f"http://127.0.0.1:{http}")
            except (ClientError, OSError):  # no msg_server registered yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
                continue
            code = c.login("alice", "pw", check=False).result_code
            if code == 0 or time.monotonic() > deadline:
                break
            c.close()
            time.sleep(0.1)
        assert code == 0
        assert c.port == msg
        c.close()
    finally:
        stop_children(children)
