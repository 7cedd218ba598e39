"""``imreactor load``: a load generator that verifies every message it sends.

One process, one :class:`~imreactor.net.EventLoop`, one
:class:`~imreactor.client.session.ClientSession` per connection; ``--processes N``
spreads a 1:1 run over N such processes. By concept:

- :mod:`.options`: what to run (:class:`LoadOptions`) and the error counters;
- :mod:`.query`: login_server's ``GET /msg_server``, without blocking the loop;
- :mod:`.login`: how each connection gets to a logged-in session, retries and all;
- :mod:`.reconnect`: with ``reconnect``, a dropped connection back and caught up;
- :mod:`.records`: what a run keeps of users, connections, senders and messages;
- :mod:`.driver`: :class:`LoadRun`, the phases of one run (login, send, drain, verify);
- :mod:`.send`: the sending phase: senders, in-flight windows, pace, acks;
- :mod:`.verify`: what was sent, acked and received where, and the verdict on it;
- :mod:`.report`: :class:`LoadReport`, its text and JSON;
- :mod:`.cli`: the ``imreactor load`` command, :func:`run_load` and :func:`execute`;
- :mod:`.multi` and :mod:`.child`: one run over N processes, parent and child.
"""

from __future__ import annotations

from .cli import add_arguments, execute, options_from, register, run, run_load
from .driver import LoadRun
from .options import DEFAULT_DURATION_S, DEFAULT_PASSWORD, ERROR_KINDS, LoadOptions
from .report import MAX_PROBLEMS, Latency, LoadReport

__all__ = [
    "DEFAULT_DURATION_S",
    "DEFAULT_PASSWORD",
    "ERROR_KINDS",
    "MAX_PROBLEMS",
    "Latency",
    "LoadOptions",
    "LoadReport",
    "LoadRun",
    "add_arguments",
    "execute",
    "options_from",
    "register",
    "run",
    "run_load",
]
