"""The operations of :class:`~imreactor.storage.base.Storage`, in the SQL both backends speak.

A backend supplies transactions (:meth:`SqlStorage._write`, :meth:`SqlStorage._read`)
that hand a :class:`Tx` to a function and map driver errors to StorageError; this module
holds every query. Queries use ``?`` placeholders (the PostgreSQL backend rewrites them)
and only SQL that SQLite >= 3.35 and PostgreSQL both accept (``ON CONFLICT``,
``RETURNING``). Every value reaches the database as a bound parameter, never as text in
the query: the only generated SQL is the count of ``?`` in an ``IN (...)`` list.

Schema in brief (each backend's migrations spell out the types):

- ``users``, ``departments``: one row each; ``updated`` drives the incremental lists.
- ``conversations``: one row per 1:1 pair ``(1, low user id, high user id)`` or group
  ``(2, group id, 0)``; ``last_msg_id`` is the id counter of the conversation.
- ``messages``: keyed by ``(conv_id, msg_id)``.
- ``unread``: per (user, session): unread count and the last msg id acknowledged read.
- ``sessions``: the recent-session list of each user, with a removed flag.
- ``chat_groups``, ``group_members`` (with the member's shield flag).

Locking rule (keeps PostgreSQL free of deadlocks): a transaction that changes what
belongs to a conversation (its messages, unread and session rows, a group's members)
first locks that conversation's row, and a transaction touching several conversations
locks them in ascending key order. ``read_ack`` and ``remove_session`` lock one row and
wait for nothing while holding it, so they cannot close a cycle either.

One module per table family, each a mixin on :class:`.plumbing.SqlBase`:
:mod:`.users` (users, departments), :mod:`.messages` (the insert and history reads),
:mod:`.sessions` (unread counters, recent sessions), :mod:`.groups` (groups, members);
:mod:`.plumbing` holds the transaction interface and the helpers they share.
"""

from __future__ import annotations

from .groups import GroupQueries
from .messages import MessageQueries
from .plumbing import Clock, Row, Tx, apply_migrations
from .sessions import SessionQueries
from .users import UserQueries

__all__ = ["Clock", "Row", "SqlStorage", "Tx", "apply_migrations"]


class SqlStorage(UserQueries, MessageQueries, SessionQueries, GroupQueries):
    """Implements :class:`~imreactor.storage.base.Storage` on top of a backend's transactions.

    A backend subclasses this and supplies ``_write``, ``_read``, ``close`` and, if its
    writers run concurrently, ``FOR_UPDATE``. Thread-safe as those are: each call runs its
    own transaction on a connection no other thread uses meanwhile.
    """
