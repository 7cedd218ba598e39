"""msg_server's cache of group membership.

Group messages need the member list on every send (who may send, who gets
it), so it is kept here instead of being fetched from the database each time.
An entry is filled on first use from db_proxy (``IMGroupInfoListReq`` with
version 0), replaced whenever this server changes the group or hears of a
change from another server (``IMGroupChangeMemberNotify``), and dropped after
``ttl_s`` as a safety net against a missed notification. An answer to a fetch
during which the group changed may predate the change: it answers the fetch's
waiters but is not cached.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...pdu.proto import im_group_pb2 as group_pb

if TYPE_CHECKING:
    from ...net import EventLoop
    from ..links import LinkSet

log = logging.getLogger(__name__)

GroupCallback = Callable[["GroupEntry | None"], Any]


@dataclass(frozen=True)
class GroupEntry:
    group_id: int
    creator_id: int
    group_type: int
    members: frozenset[int]
    fetched_at: float


class GroupCache:
    """group id → :class:`GroupEntry`. Loop thread only."""

    def __init__(self, loop: EventLoop, db: LinkSet, ttl_s: float, timeout_s: float) -> None:
        self.loop = loop
        self.db = db
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self._groups: dict[int, GroupEntry] = {}
        self._waiting: dict[int, list[GroupCallback]] = {}
        self._changed: set[int] = set()  # changed while a fetch of theirs was in flight
        self.fetches = 0  #: database round trips made (for tests and metrics)

    def get(self, group_id: int, callback: GroupCallback) -> None:
        """``callback(entry)`` now if cached, else after one fetch (None: no such group)."""
        entry = self._groups.get(group_id)
        if entry is not None and self.loop.time() - entry.fetched_at < self.ttl_s:
            callback(entry)
            return
        waiting = self._waiting.get(group_id)
        if waiting is not None:
            waiting.append(callback)  # one fetch serves everyone who asked meanwhile
            return
        link = self.db.pick()
        if link is None:
            callback(None)
            return
        self._waiting[group_id] = [callback]
        self.fetches += 1
        req = group_pb.IMGroupInfoListReq(user_id=0)
        req.group_version_list.add(group_id=group_id, version=0)

        def fetched(rsp: group_pb.IMGroupInfoListRsp | None, exc: BaseException | None) -> None:
            found: GroupEntry | None = None
            if rsp is None:
                log.warning("group %d: fetch failed: %s", group_id, exc)
            else:
                for info in rsp.group_info_list:
                    if info.group_id == group_id:
                        found = GroupEntry(
                            group_id,
                            info.group_creator_id,
                            info.group_type,
                            frozenset(info.group_member_list),
                            self.loop.time(),
                        )
            if group_id in self._changed:
                self._changed.discard(group_id)
            elif found is not None:
                self._groups[group_id] = found
            for cb in self._waiting.pop(group_id, []):
                try:
                    cb(found)
                except Exception:  # one caller's bug must not cost the others their answer
                    log.exception("group %d: callback %r failed", group_id, cb)

        try:
            link.request(
                req, fetched, timeout_s=self.timeout_s, response=group_pb.IMGroupInfoListRsp
            )
        except RuntimeError as exc:  # every seq of the link in use: answer now, wait for none
            fetched(None, exc)

    def put(self, group_id: int, creator_id: int, group_type: int, members: Any) -> GroupEntry:
        entry = GroupEntry(group_id, creator_id, group_type, frozenset(members), self.loop.time())
        self._groups[group_id] = entry
        self._note_change(group_id)
        return entry

    def update_members(self, group_id: int, members: Any) -> None:
        """A change we know the outcome of: keep the entry, with the new member list."""
        entry = self._groups.get(group_id)
        if entry is not None:
            self.put(group_id, entry.creator_id, entry.group_type, members)
        else:
            self._note_change(group_id)  # a fetch in flight may answer from before it

    def invalidate(self, group_id: int) -> None:
        self._groups.pop(group_id, None)
        self._note_change(group_id)

    def _note_change(self, group_id: int) -> None:
        if group_id in self._waiting:
            self._changed.add(group_id)
