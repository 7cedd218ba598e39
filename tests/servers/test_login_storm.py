"""A storm of 2,000 logins at once into one msg_server, cold and then returning: 0 failures.

Real processes on SQLite, driven by the load generator from one process (every login
in flight at once). The users' hashes are made with a cheaper scrypt than the default
(the cost is stored with each hash), so creating them takes seconds; which path a
login takes (a full check on the hash pool, or the credential cache) does not depend
on the cost, and nothing here is timed: ``bench/scale.py`` measures logins/s at full
cost. "Server busy" answers (a full hash pool) are retried by the load generator
with jitter, as clients do, and are no failure; anything else is. db_proxy must not
have answered a request after msg_server gave up on it (a late answer).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from imreactor.accounts import create_users
from imreactor.client.load import LoadOptions, run_load
from imreactor.storage.passwords import PasswordHasher

from .conftest import SuiteFactory

STORM_USERS = 2000
PASSWORD = "storm-pw"

pytestmark = pytest.mark.slow


@pytest.fixture
def database(tmp_path: Path) -> str:
    """SQLite alone: the login path is the same on both backends (tests/storage has both)."""
    return f"sqlite:///{tmp_path / 'im.db'}"


def test_a_storm_of_2000_logins_cold_then_returning_has_no_failure(
    make_suite: SuiteFactory,
) -> None:
    suite = make_suite()
    names = [f"storm{i}" for i in range(STORM_USERS)]
    created = create_users(
        suite.layout.database_url, names, PASSWORD, hasher=PasswordHasher(n=2**10)
    )
    assert created == names
    options = LoadOptions(
        login_url=suite.http_url,
        users=STORM_USERS,
        pairs=1,
        count=10,
        password=PASSWORD,
        user_prefix="storm",
        login_concurrency=STORM_USERS,  # every login in flight at once
        login_timeout_s=30.0,
        login_retry_s=120.0,
    )
    for storm in ("cold", "returning"):
        report = run_load(options)
        print(f"{storm} storm:\n{report.text()}")  # shown with -s
        assert report.ok, f"{storm}: {report.text()}"
        assert report.logins_ok == STORM_USERS, storm
        assert report.logins_failed == report.logins_refused == 0, storm
    db_log = suite.log_text("db_proxy_server")
    assert "Traceback" not in db_log
    msg_log = suite.log_text("msg_server")
    assert "late answer" not in msg_log and "unknown command" not in msg_log
