"""The real-suite fixtures of tests/servers (``suite``, ``make_suite``), for client tests."""

from servers.conftest import database, make_suite, suite  # noqa: F401
