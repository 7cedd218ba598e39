"""Concurrent inserts from several threads: ids stay contiguous, counts stay exact."""

from __future__ import annotations

import random
import threading
from collections import Counter, defaultdict
from collections.abc import Callable

from imreactor.storage import MsgType, NewMessage, SessionType, Storage

from .helpers import add_users

THREADS = 8
BATCHES_PER_THREAD = 25
MAX_BATCH = 4


def test_concurrent_inserts_have_no_gaps_and_no_duplicates(
    open_store: Callable[[], Storage],
) -> None:
    # Two storage objects on one database: threads of one share its connections and
    # write lock, the two compete only in the database (as two processes would).
    stores = [open_store(), open_store()]
    a, b, c = add_users(stores[0], "a", "b", "c")
    gid = stores[0].create_group(a, "g", member_ids=[b, c]).group_id
    # (conversation name, sender, recipient session, type)
    shapes = [
        ("ab", a, b, MsgType.SINGLE_TEXT),
        ("ab", b, a, MsgType.SINGLE_TEXT),
        ("ac", c, a, MsgType.SINGLE_AUDIO),
        ("g", a, gid, MsgType.GROUP_TEXT),
        ("g", b, gid, MsgType.GROUP_TEXT),
        ("g", c, gid, MsgType.GROUP_AUDIO),
    ]
    stored: dict[str, list[tuple[int, bytes]]] = defaultdict(list)
    senders: dict[str, Counter[int]] = defaultdict(Counter)
    lock = threading.Lock()
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def worker(n: int) -> None:
        rng = random.Random(n)
        store = stores[n % 2]
        try:
            start.wait()
            for i in range(BATCHES_PER_THREAD):
                picked = [rng.choice(shapes) for _ in range(rng.randint(1, MAX_BATCH))]
                batch = [
                    NewMessage(sender, to, mtype, f"{n}.{i}.{j}".encode())
                    for j, (_, sender, to, mtype) in enumerate(picked)
                ]
                results = store.insert_messages(batch)
                seen: dict[str, int] = {}
                with lock:
                    for (conv, sender, _, _), msg, res in zip(picked, batch, results, strict=True):
                        assert res.ok, res.error
                        # Within a batch a conversation's ids ascend in batch order.
                        assert res.msg_id > seen.get(conv, 0)
                        seen[conv] = res.msg_id
                        stored[conv].append((res.msg_id, msg.msg_data))
                        senders[conv][sender] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors

    store = stores[0]
    views = {"ab": (a, SessionType.SINGLE, b), "ac": (a, SessionType.SINGLE, c)}
    views["g"] = (a, SessionType.GROUP, gid)
    for conv, entries in stored.items():
        ids = sorted(msg_id for msg_id, _ in entries)
        assert ids == list(range(1, len(ids) + 1)), f"{conv}: gaps or duplicates"
        user, st, sid = views[conv]
        assert store.latest_msg_id(user, st, sid) == len(ids)
        # What each thread was told is what the database holds.
        in_db = {}
        for begin in range(len(ids), 0, -100):
            in_db.update(
                {m.msg_id: m.msg_data for m in store.get_msg_list(user, st, sid, begin, 100)}
            )
        assert in_db == dict(entries)

    unread = {
        u: {(i.session_type, i.session_id): i.unread_cnt for i in store.unread_counts(u)}
        for u in (a, b, c)
    }
    g = senders["g"]
    total_g = sum(g.values())
    assert unread[a].get((SessionType.SINGLE, b), 0) == senders["ab"][b]
    assert unread[b].get((SessionType.SINGLE, a), 0) == senders["ab"][a]
    assert unread[a].get((SessionType.SINGLE, c), 0) == senders["ac"][c]
    for user in (a, b, c):
        assert unread[user].get((SessionType.GROUP, gid), 0) == total_g - g[user]
