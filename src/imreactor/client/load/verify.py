"""What a run sent, what was acked and what arrived where, and the verdict on it.

:class:`Verifier` keeps the accounts as the run goes (loop thread only): each message
sent and, once acked, its msg_id and the connections that should get it; each arrival
at a connection (:attr:`~.records.Endpoint.got`), live or fetched from history; the
deliveries still awaited; the acked ids of each conversation. The run tells it every
send, ack and arrival; problems go to the run's error counters as they are found.

:meth:`Verifier.verify`, once at the end: every acknowledged message must
have arrived exactly once, with the acknowledged ``msg_id``, at every
connection of the recipient (of every member, for a group message) and at
every other connection of the sender (connections logged in when the ack
came; never the sending connection); on each connection the messages of
one conversation (a pair of users, or the group) must arrive in increasing
``msg_id`` order; the acked ids of a conversation must be distinct and,
when every message of it was acked, contiguous; nothing may arrive where it
was not sent.

A body reads ``<run id>:<sending connection>:<sequence number>:`` and padding: that is
how an arrival is matched to its send (:meth:`Verifier.key_of`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from .records import (
    CAUGHT,
    CAUGHT_AND_LIVE,
    LIVE,
    READY,
    Endpoint,
    Sender,
    Sent,
    User,
    conversation,
)

#: A message of this run: (sending endpoint, sequence number).
Key = tuple[int, int]


class ErrorSink(Protocol):
    """Counts ``n`` errors of ``kind`` (one of :data:`~.options.ERROR_KINDS`) and keeps ``text``."""

    def __call__(self, kind: str, text: str, n: int = 1) -> None: ...


@dataclass
class Deliveries:
    """What :meth:`Verifier.verify` counted: deliveries expected and verified, the latency
    of each verified live one, and when the last verified one arrived (0: none)."""

    expected: int = 0
    delivered: int = 0
    latency_s: list[float] = field(default_factory=list)
    t_last: float = 0.0


class Verifier:
    """The accounts of one run (module docstring); ``endpoints`` are the run's, by index.

    ``info`` gets the counts that are no error (``foreign_messages``,
    ``unacked_delivered``); :attr:`awaiting` holds (endpoint, key) of every acked
    message's delivery that has not arrived yet.
    """

    def __init__(
        self,
        run_id: bytes,
        size: int,
        endpoints: list[Endpoint],
        info: dict[str, int],
        error: ErrorSink,
    ) -> None:
        self._run_id = run_id
        self._size = size
        self._endpoints = endpoints
        self._info = info
        self._error = error
        self.sent: dict[Key, Sent] = {}
        self.awaiting: set[tuple[int, Key]] = set()
        self._conv_ids: dict[tuple[int, int], list[int]] = {}
        self._conv_unacked: set[tuple[int, int]] = set()

    # -- bodies --------------------------------------------------------------------------

    def body(self, ep_index: int, seq: int) -> bytes:
        head = b"%s:%d:%d:" % (self._run_id, ep_index, seq)
        return head + b"x" * (self._size - len(head))

    def key_of(self, body: bytes) -> Key | None:
        """(sending endpoint, seq) of a body this run sent; None for anything else."""
        parts = body.split(b":", 3)
        if len(parts) < 4 or parts[0] != self._run_id:
            return None
        try:
            return (int(parts[1]), int(parts[2]))
        except ValueError:
            return None

    # -- as the run goes -----------------------------------------------------------------

    def sending(self, key: Key, t_sent: float) -> Sent:
        """Message ``key`` goes out now; its record."""
        record = Sent(t_sent)
        self.sent[key] = record
        return record

    def unacked(self, conv: tuple[int, int]) -> None:
        """A message of ``conv`` got no good ack: its ids need not be contiguous."""
        self._conv_unacked.add(conv)

    def acked(self, sender: Sender, key: Key, record: Sent, msg_id: int) -> None:
        """``sender``'s message ``key`` was acked as ``msg_id``: it is now expected at every
        connection of its receivers but the sending one that is logged in or coming back."""
        ep = sender.endpoint
        record.msg_id = msg_id
        self._conv_ids.setdefault(sender.conv, []).append(msg_id)
        record.expected = tuple(
            e.index
            for user in sender.receivers
            for e in user.endpoints
            if e is not ep and (e.state == READY or e.lost_at)
        )
        for index in record.expected:
            if key not in self._endpoints[index].got:
                self.awaiting.add((index, key))

    def delivered(self, ep: Endpoint, msg: Any, now: float) -> Key | None:
        """An ``IMMsgData`` pushed to ``ep``: recorded, a reorder counted. Its key if it is
        this run's and new at ``ep``; None for another's message or a further copy."""
        key = self.key_of(msg.msg_data)
        if key is None:
            self._info["foreign_messages"] += 1
            return None
        entry = ep.got.get(key)
        if entry is not None:
            if entry[6] == CAUGHT:
                # Fetched after the reconnect, then pushed too (it was in flight): a
                # client tells the two apart by msg_id; a second push is a duplicate.
                entry[6] = CAUGHT_AND_LIVE
            else:
                entry[0] += 1
            return None
        ep.got[key] = [1, msg.msg_id, now, msg.from_user_id, msg.to_session_id, msg.msg_type, LIVE]
        conv = conversation(msg.from_user_id, msg.to_session_id, msg.msg_type)
        last = ep.last_id.get(conv, 0)
        if msg.msg_id > last:
            ep.last_id[conv] = msg.msg_id
        else:
            self._error(
                "reorders",
                f"{ep.user.name} (connection {ep.index}): msg_id {msg.msg_id} of "
                f"conversation {conv} arrived after {last}",
            )
        return key

    def caught(self, ep: Endpoint, peer: User, m: Any, now: float) -> bool:
        """A history message of ``ep``'s conversation with ``peer``: received, unless it
        was already (or is another run's, or was sent from ``ep`` itself). True if counted."""
        key = self.key_of(m.msg_data)
        if key is None or key in ep.got or key[0] == ep.index:
            return False
        to = peer.user_id if m.from_session_id == ep.user.user_id else ep.user.user_id
        ep.got[key] = [1, m.msg_id, now, m.from_session_id, to, m.msg_type, CAUGHT]
        if self.awaiting:
            self.awaiting.discard((ep.index, key))
        return True

    def arrived(self, ep_index: int, key: Key) -> bool:
        """``key`` arrived at endpoint ``ep_index``; True if it was the last delivery awaited."""
        if not self.awaiting:
            return False
        self.awaiting.discard((ep_index, key))
        return not self.awaiting

    # -- at the end ----------------------------------------------------------------------

    def verify(self, sender_of: dict[int, Sender]) -> Deliveries:
        """Check everything received against everything acked (``sender_of``: the sender of
        each sending endpoint). Errors go to the run; call once."""
        found = self._check_expected()
        self._check_received(sender_of)
        self._check_ids()
        return found

    def _check_expected(self) -> Deliveries:
        """Each acked message at each connection that should have it: once, with its id."""
        found = Deliveries()
        for key, record in self.sent.items():
            if not record.msg_id:
                continue
            src = self._endpoints[key[0]].user.name
            for index in record.expected:
                found.expected += 1
                ep = self._endpoints[index]
                entry = ep.got.get(key)
                where = f"{ep.user.name} (connection {index})"
                if entry is None:
                    self._error(
                        "losses",
                        f"{src} message {key[1]} (msg_id {record.msg_id}) never reached {where}",
                    )
                    continue
                found.delivered += 1
                copies, msg_id, t_recv = entry[0], entry[1], entry[2]
                found.t_last = max(found.t_last, t_recv)
                if copies > 1:
                    self._error(
                        "duplicates",
                        f"{src} message {key[1]} (msg_id {record.msg_id}) "
                        f"reached {where} {copies} times",
                        copies - 1,
                    )
                if msg_id != record.msg_id:
                    self._error(
                        "wrong_ids",
                        f"{src} message {key[1]} acked as msg_id {record.msg_id}, "
                        f"delivered to {where} as {msg_id}",
                    )
                if entry[6] == LIVE:  # a history fetch is no delivery latency
                    found.latency_s.append(t_recv - record.t_sent)
        return found

    def _check_received(self, sender_of: dict[int, Sender]) -> None:
        """Each message received: sent by this run, to here, from and to whom it says."""
        for ep in self._endpoints:
            for key, entry in ep.got.items():
                sent = self.sent.get(key)
                sender = sender_of.get(key[0])
                where = f"{ep.user.name} (connection {ep.index})"
                if sent is None or sender is None:
                    self._error("misdelivered", f"{where} got message {key} nobody sent")
                    continue
                sender_ep = sender.endpoint
                if not sent.msg_id:
                    self._info["unacked_delivered"] += 1
                    if ep is sender_ep or ep.user not in sender.receivers:
                        self._error("misdelivered", f"{where} got unacked message {key}")
                elif ep.index not in sent.expected:
                    self._error("misdelivered", f"{where} got message {key} not meant for it")
                elif (entry[3], entry[4], entry[5]) != (
                    sender_ep.user.user_id,
                    sender.session_id,
                    sender.msg_type,
                ):
                    self._error(
                        "misdelivered",
                        f"{where} got message {key} as from {entry[3]} to {entry[4]} "
                        f"(msg_type {entry[5]:#x})",
                    )

    def _check_ids(self) -> None:
        """The acked ids of each conversation: distinct, and without gaps if all were acked."""
        for conv, ids in self._conv_ids.items():
            distinct = set(ids)
            if len(distinct) != len(ids):
                self._error(
                    "id_conflicts",
                    f"conversation {conv}: {len(ids) - len(distinct)} msg_ids acked twice",
                    len(ids) - len(distinct),
                )
            if conv not in self._conv_unacked:
                missing = max(distinct) - min(distinct) + 1 - len(distinct)
                if missing:
                    self._error(
                        "id_gaps",
                        f"conversation {conv}: {missing} msg_ids missing between "
                        f"{min(distinct)} and {max(distinct)}",
                        missing,
                    )
