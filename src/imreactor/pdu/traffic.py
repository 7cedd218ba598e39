"""This process's PDU traffic: PDUs in and out by command, and refusals by kind.

Every :class:`~imreactor.pdu.imconn.ImConnection` counts into the one
:data:`TRAFFIC` of its process (one server is one process; tests that run several
in one process see their sum). Plain dicts of ints, written only on the loop
thread: a count costs one dict update on the hot path, with no lock. A metrics
exporter reads them when it is scraped (see :mod:`imreactor.servers.metrics`).
"""

from __future__ import annotations

from collections import defaultdict

__all__ = ["ERROR_KINDS", "TRAFFIC", "Traffic"]

#: The kinds of :attr:`Traffic.errors`.
ERROR_KINDS = (
    "unknown_command",  # no handler, and no default, for the command id
    "undecodable",  # the body does not parse as the command's message
    "missing_fields",  # it parses but lacks required fields
    "handler_failed",  # the handler raised: a bug, logged with its traceback
    "late_answer",  # an answer after its request had timed out
    "refused",  # valid, but the server will not serve it (not a member, say)
    "bad_frame",  # a header with an impossible length: the connection is closed
)


class Traffic:
    """PDU counts by command id, and errors by kind (see :data:`ERROR_KINDS`)."""

    __slots__ = ("errors", "received", "sent")

    def __init__(self) -> None:
        self.received: defaultdict[int, int] = defaultdict(int)
        self.sent: defaultdict[int, int] = defaultdict(int)
        self.errors: defaultdict[str, int] = defaultdict(int)

    def clear(self) -> None:
        """Forget every count (for tests)."""
        self.received.clear()
        self.sent.clear()
        self.errors.clear()


#: The process's traffic.
TRAFFIC = Traffic()
