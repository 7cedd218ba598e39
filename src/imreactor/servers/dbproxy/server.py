"""db_proxy_server: serves msg_servers' database requests on a worker pool.

Each request PDU from a msg_server is decoded on the loop, run on the
reactor's :class:`~imreactor.net.WorkerPool` and answered on the loop with the
request's seq and its ``attach_data`` echoed. Requests that carry the same
``attach_data`` (the same client connection) run in order on one worker; others
run in parallel. Message inserts go through a :class:`GroupCommitWriter`, so a
burst of messages costs few commits, and a message's answer (its ``msg_id``) is
sent only after its transaction committed.

A storage failure affects only the request that met it: it is logged; a login
is answered with result 3 (no database), a message with ``msg_id`` 0 (not
stored: msg_server sends no ack), other queries get no answer (msg_server's
request times out).

A request carries the time its msg_server will wait for the answer (the PDU
header's budget, :func:`~imreactor.pdu.header.budget_ms`); one still queued when
that time has passed is dropped unstarted and not answered — nobody waits for it.

A login reads the account (one indexed row) on the worker pool, then checks the
password: against the :class:`CredentialCache` on the loop if it was verified
recently, else with a full scrypt on a separate, small, bounded hash pool, so a
storm of logins can neither occupy the threads every other request needs nor
queue without bound (a login the hash pool cannot take is answered result 3,
busy, at once; clients retry).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from google.protobuf.message import Message

from ...logs import RateLimitedLog, ids
from ...net import DeadlineExpired, EventLoop, PoolFull, Server, WorkerPool
from ...pdu.imconn import Dispatcher, ImConnection, Keepalive, LinkPolicy
from ...pdu.proto import im_base_define_pb2 as base
from ...pdu.proto import im_buddy_pb2 as buddy
from ...pdu.proto import im_group_pb2 as group_pb
from ...pdu.proto import im_message_pb2 as msg_pb
from ...pdu.proto import im_server_pb2 as server_pb
from ...storage import ConflictError, NotFoundError, Storage, StorageError, open_storage
from ...storage.records import GroupType, LoginRecord, NewMessage, SessionType, User
from ..linkauth import link_server_context
from ..metrics import SIZE_BUCKETS, Metrics
from ..runner import Done, when_idle
from .config import DbProxyConfig
from .credentials import CredentialCache
from .writer import GroupCommitWriter

log = logging.getLogger(__name__)
#: Overload and outages come as floods: one line per kind per window (imreactor.logs).
_flood_log = RateLimitedLog(log, logging.WARNING)
_failure_log = RateLimitedLog(log, logging.ERROR)  # the storage failed a request

M = TypeVar("M", bound=Message)


def user_info(user: User) -> base.UserInfo:
    return base.UserInfo(
        user_id=user.user_id,
        user_gender=user.gender,
        user_nick_name=user.nick,
        avatar_url=user.avatar_url,
        department_id=user.department_id,
        email=user.email,
        user_real_name=user.real_name,
        user_tel=user.phone,
        user_domain=user.domain,
        status=user.status,
        sign_info=user.sign_info,
    )


def msg_info(m: Any) -> base.MsgInfo:
    return base.MsgInfo(
        msg_id=m.msg_id,
        from_session_id=m.from_user_id,
        create_time=m.create_time,
        msg_type=base.MsgType.ValueType(m.msg_type),
        msg_data=m.msg_data,
    )


def _session_type(value: int) -> SessionType:
    return SessionType(value)


class DbProxyServer:
    """The listener for msg_servers, the worker pool, the group-commit writer and the storage."""

    def __init__(
        self, loop: EventLoop, config: DbProxyConfig, store: Storage | None = None
    ) -> None:
        self.loop = loop
        self.config = config
        self.store = store if store is not None else open_storage(config.database)
        self.pool = WorkerPool(loop, config.threads, max_pending=config.max_pending, name="db")
        self.hash_pool = WorkerPool(
            loop, config.hash_threads, max_pending=config.hash_max_pending, name="hash"
        )
        self.credentials = CredentialCache(
            config.credential_cache_size, config.credential_cache_ttl_s, clock=loop.time
        )
        self.metrics = metrics = Metrics(loop, "db_proxy_server", self._ready)
        self.writer: GroupCommitWriter[NewMessage, Any] = GroupCommitWriter(
            self.store.insert_messages,
            config.max_batch,
            retry_alone=(ConflictError, NotFoundError),
            batch_sizes=metrics.histogram(
                "imreactor_db_commit_batch_size", "Messages per group commit", SIZE_BUCKETS
            ),
        )
        #: From a message's arrival to its commit (observed on the writer thread).
        self.store_latency = metrics.histogram(
            "imreactor_db_store_seconds", "From an IMMsgData's arrival to its commit"
        )
        self.keepalive = Keepalive(loop)
        self.policy = LinkPolicy(
            heartbeat_s=config.heartbeat_s, timeout_s=config.timeout_s, carry_budget=True
        )
        self.dispatcher = Dispatcher[ImConnection]()
        self._server: Server | None = None
        self.requests = 0
        self.failures = 0
        self._storage_failing = False
        #: Requests dropped unstarted because their msg_server had stopped waiting.
        self.expired = 0
        #: Logins answered "busy" because the hash pool was full.
        self.busy = 0
        self._export(metrics)
        self._serve(msg_pb.IMMsgDataReadAck, self._read_ack)
        self._serve(msg_pb.IMUnreadMsgCntReq, self._unread)
        self._serve(msg_pb.IMGetMsgListReq, self._msg_list)
        self._serve(msg_pb.IMGetLatestMsgIdReq, self._latest_msg_id)
        self._serve(msg_pb.IMGetMsgByIdReq, self._msg_by_id)
        self._serve(buddy.IMRecentContactSessionReq, self._recent_sessions)
        self._serve(buddy.IMUsersInfoReq, self._users_info)
        self._serve(buddy.IMRemoveSessionReq, self._remove_session)
        self._serve(buddy.IMAllUserReq, self._all_users)
        self._serve(buddy.IMDepartmentReq, self._departments)
        self._serve(buddy.IMChangeSignInfoReq, self._change_sign_info)
        self._serve(group_pb.IMNormalGroupListReq, self._normal_groups)
        self._serve(group_pb.IMGroupInfoListReq, self._group_infos)
        self._serve(group_pb.IMGroupCreateReq, self._group_create)
        self._serve(group_pb.IMGroupChangeMemberReq, self._group_change_member)
        self._serve(group_pb.IMGroupShieldReq, self._group_shield)
        self._serve(server_pb.IMGroupGetShieldReq, self._group_get_shield)
        self.dispatcher.register(msg_pb.IMMsgData, self._on_msg_data)
        self.dispatcher.register(server_pb.IMValidateReq, self._on_validate)

    def _export(self, m: Metrics) -> None:
        m.counted("imreactor_db_requests", "Requests received", lambda: self.requests)
        m.counted("imreactor_db_failures", "Requests the storage failed", lambda: self.failures)
        m.counted(
            "imreactor_db_expired",
            "Requests dropped unstarted: their msg_server had stopped waiting",
            lambda: self.expired,
        )
        m.counted(
            "imreactor_db_logins_busy", "Logins answered busy: hash pool full", lambda: self.busy
        )
        m.counted("imreactor_db_messages_stored", "Messages committed", lambda: self.writer.items)
        m.counted(
            "imreactor_db_failed_batches",
            "Group commits that raised",
            lambda: self.writer.failed_batches,
        )
        m.gauge(
            "imreactor_db_queue_depth",
            "Work waiting or running, by queue",
            lambda: {
                ("workers",): self.pool.pending,
                ("hash",): self.hash_pool.pending,
                ("writer",): self.writer.queued,
            },
            ("queue",),
        )
        m.gauge("imreactor_db_links", "msg_server links connected", lambda: len(self.keepalive))

    def _ready(self) -> tuple[bool, dict[str, Any]]:
        # Ready while messages can be stored: the writer thread runs and the storage's
        # most recent answer was not a failure.
        return self.writer.alive and not self._storage_failing, {
            "writer": self.writer.alive,
            "storage_failing": self._storage_failing,
        }

    def start(self) -> None:
        c = self.config
        if c.http_port:
            self.metrics.listen(c.listen_host, c.http_port)
        self._server = self.loop.listen(
            c.listen_host,
            c.port,
            lambda: ImConnection(self.dispatcher, self.keepalive, self.policy),
            ssl=link_server_context(c, "dbproxy"),
        )

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.port

    def drain(self, done: Done) -> None:
        """Stop accepting links and reading requests; answer every request read (its
        commit included); then close every link after its answers and call ``done()``
        once they are closed. A request a msg_server sent after the last read fails there
        as its link closes (msg_server then closes that client's connection)."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for link in self.keepalive:
            link.conn.pause_reading()

        def working() -> bool:
            return bool(self.pool.pending or self.hash_pool.pending or self.writer.queued)

        def answered() -> None:
            for link in self.keepalive:
                link.conn.close()
            when_idle(self.loop, lambda: len(self.keepalive) > 0, done)

        when_idle(self.loop, working, answered)

    def close(self) -> None:
        """Stop listening, finish queued work, then close the storage."""
        self.metrics.close()
        if self._server is not None:
            self._server.close()
        self.pool.shutdown(wait=True)
        self.hash_pool.shutdown(wait=True)
        self.writer.close()
        self.store.close()

    # -- plumbing -------------------------------------------------------------------------

    def _serve(self, request: type[M], work: Callable[[Storage, M], Message | None]) -> None:
        """Answer ``request`` with what ``work`` returns, run on the worker pool."""
        self.dispatcher.register(request, self._runner(work))

    def _runner(
        self, work: Callable[[Storage, M], Message | None]
    ) -> Callable[[ImConnection, M, int], None]:
        def handle(link: ImConnection, request: M, seq: int) -> None:
            self.requests += 1
            # Not every request has the field (IMMsgDataReadAck has none).
            has_attach = "attach_data" in request.DESCRIPTOR.fields_by_name
            attach: bytes = (
                getattr(request, "attach_data")  # noqa: B009 - a field only some requests have
                if has_attach and request.HasField("attach_data")
                else b""
            )

            def done(response: Message | None, exc: BaseException | None) -> None:
                if isinstance(exc, DeadlineExpired):
                    self._expired(request)
                    return
                self._storage_failing = exc is not None
                if exc is not None:
                    self.failures += 1
                    name = type(request).__name__
                    _failure_log.log(self.loop, f"{name} failures", "%s failed: %r", name, exc)
                    response = self._failure_answer(request)
                if response is None:
                    return
                if attach:
                    response.attach_data = attach  # type: ignore[attr-defined]
                link.send(response, seq)

            try:
                # One key per client connection: its requests run in order.
                self._submit_in_order(link, attach, done, work, self.store, request)
            except PoolFull:
                self.failures += 1
                name = type(request).__name__
                _flood_log.log(self.loop, "worker pool full", "worker pool full; %s refused", name)
                answer = self._failure_answer(request)
                if answer is not None:
                    done(answer, None)

        return handle

    def _expired(self, request: Message) -> None:
        self.expired += 1
        name = type(request).__name__
        _flood_log.log(
            self.loop,
            "dropped unstarted",
            "%s dropped unstarted: its msg_server stopped waiting",
            name,
        )

    def _failure_answer(self, request: Any) -> Message | None:
        if isinstance(request, msg_pb.IMMsgData):
            refused = msg_pb.IMMsgData()
            refused.CopyFrom(request)
            refused.msg_id = 0
            return refused
        return None

    # -- handlers (worker threads) --------------------------------------------------------

    # -- logins ---------------------------------------------------------------------------

    def _on_validate(self, link: ImConnection, req: server_pb.IMValidateReq, seq: int) -> None:
        """Read the account on the worker pool, then check the password (cache or hash).

        The answer echoes ``attach_data``. Refusals: result 2 for an unknown name, a
        wrong password or a disabled account (the latter said only to whoever knows
        the password); result 3 when the database failed or the hash pool is full.
        """
        self.requests += 1
        deadline = link.current_deadline
        name, md5 = req.user_name, req.password
        attach = req.attach_data if req.HasField("attach_data") else b""

        def answer(rsp: server_pb.IMValidateRsp) -> None:
            if attach:
                rsp.attach_data = attach
            link.send(rsp, seq)

        def refuse(code: int, why: str) -> None:
            answer(server_pb.IMValidateRsp(user_name=name, result_code=code, result_string=why))

        def accept(record: LoginRecord) -> None:
            if record.disabled:
                log.info("login of %r refused: the account is disabled", name)
                refuse(base.REFUSE_REASON_DB_VALIDATE_FAILED, "account disabled")
            else:
                answer(
                    server_pb.IMValidateRsp(
                        user_name=name, result_code=0, user_info=user_info(record.user)
                    )
                )

        def failed(exc: BaseException) -> None:  # of either stage
            if isinstance(exc, DeadlineExpired):
                self._expired(req)
            else:
                self.failures += 1
                _failure_log.log(
                    self.loop, "IMValidateReq failures", "IMValidateReq failed: %r", exc
                )
                refuse(base.REFUSE_REASON_NO_DB_SERVER, "database unavailable")

        def checked(ok: Any, exc: BaseException | None, record: LoginRecord | None) -> None:
            if exc is not None:
                failed(exc)
            elif not ok or record is None:
                refuse(base.REFUSE_REASON_DB_VALIDATE_FAILED, "unknown user or wrong password")
            else:
                self.credentials.remember(record.user.user_id, record.password_hash, md5)
                accept(record)

        def looked_up(record: LoginRecord | None, exc: BaseException | None) -> None:
            if exc is not None:
                failed(exc)
                return
            if record is not None and self.credentials.check(
                record.user.user_id, record.password_hash, md5
            ):
                accept(record)
                return
            # A full check; an unknown name costs one too (against a dummy hash), so
            # the answer's timing does not tell which names exist.
            stored = None if record is None else record.password_hash
            try:
                self.hash_pool.submit(
                    self.store.check_password,
                    md5,
                    stored,
                    callback=lambda ok, e: checked(ok, e, record),
                    deadline=deadline,
                )
            except PoolFull:
                self.busy += 1
                _flood_log.log(
                    self.loop, "hash pool full", "hash pool full; login of %r answered busy", name
                )
                refuse(base.REFUSE_REASON_NO_DB_SERVER, "server busy")

        try:
            self._submit_in_order(link, attach, looked_up, self.store.login_record, name)
        except PoolFull:
            self.failures += 1
            _flood_log.log(self.loop, "worker pool full", "worker pool full; IMValidateReq refused")
            refuse(base.REFUSE_REASON_NO_DB_SERVER, "database unavailable")

    def _submit_in_order(
        self,
        link: ImConnection,
        attach: bytes,
        callback: Callable[[Any, BaseException | None], Any],
        fn: Callable[..., Any],
        *args: Any,
    ) -> None:
        """Queue ``fn(*args)`` on the main pool behind earlier requests of the same client.

        The key is the link plus the request's ``attach_data`` (which names the client
        connection on msg_server), so one client's requests run in the order sent. The
        deadline is the one the PDU being dispatched carried. Raises ``PoolFull``.
        """
        self.pool.submit(
            fn, *args, key=(id(link), attach), callback=callback, deadline=link.current_deadline
        )

    def _on_msg_data(self, link: ImConnection, req: msg_pb.IMMsgData, seq: int) -> None:
        """Store a message; answer from the commit itself, so answers leave in msg_id order.

        The worker (keyed by client connection, like every request) hands the
        message to the group-commit writer and waits, which keeps the client's
        later requests behind it; the answer is queued to the loop by the writer
        thread in commit order.
        """
        self.requests += 1
        attach = req.attach_data
        arrived = self.loop.time()

        def committed(result: Any) -> None:  # writer thread
            self.store_latency.observe(self.loop.time() - arrived)
            rsp = msg_pb.IMMsgData()
            rsp.CopyFrom(req)
            rsp.msg_id = result.msg_id if result.ok else 0
            if result.ok:
                rsp.create_time = result.create_time
            else:
                log.info(
                    "message from %d refused: %s",
                    req.from_user_id,
                    result.error,
                    extra=ids(user=req.from_user_id),
                )
            self.loop.call_soon_threadsafe(link.send, rsp, seq)

        def work(store: Storage, request: Any) -> None:  # worker thread
            new = NewMessage(
                request.from_user_id, request.to_session_id, request.msg_type, request.msg_data
            )
            self.writer.store(new, committed, timeout_s=self.config.store_timeout_s)

        def failed(result: Any, exc: BaseException | None) -> None:  # loop thread
            if isinstance(exc, DeadlineExpired):
                # Not stored and not answered: msg_server gave up on it, so its
                # client was never told it is stored, and storing it now would
                # make a resend a duplicate.
                self._expired(req)
            elif exc is not None:
                self.failures += 1
                self._storage_failing = True
                _failure_log.log(self.loop, "IMMsgData failures", "IMMsgData failed: %r", exc)
                answer = self._failure_answer(req)
                if answer is not None:
                    link.send(answer, seq)

        try:
            self._submit_in_order(link, attach, failed, work, self.store, req)
        except PoolFull:
            self.failures += 1
            _flood_log.log(self.loop, "worker pool full", "worker pool full; IMMsgData refused")
            failed(None, PoolFull("worker pool full"))

    def _read_ack(self, store: Storage, req: msg_pb.IMMsgDataReadAck) -> None:
        store.read_ack(req.user_id, _session_type(req.session_type), req.session_id, req.msg_id)
        return None

    def _unread(self, store: Storage, req: msg_pb.IMUnreadMsgCntReq) -> Message:
        infos = store.unread_counts(req.user_id)
        rsp = msg_pb.IMUnreadMsgCntRsp(
            user_id=req.user_id, total_cnt=sum(i.unread_cnt for i in infos)
        )
        for i in infos:
            rsp.unreadinfo_list.add(
                session_id=i.session_id,
                session_type=base.SessionType.ValueType(int(i.session_type)),
                unread_cnt=i.unread_cnt,
                latest_msg_id=i.latest_msg_id,
                latest_msg_data=i.latest_msg_data,
                latest_msg_type=base.MsgType.ValueType(i.latest_msg_type),
                latest_msg_from_user_id=i.latest_msg_from_user_id,
            )
        return rsp

    def _msg_list(self, store: Storage, req: msg_pb.IMGetMsgListReq) -> Message:
        msgs = store.get_msg_list(
            req.user_id,
            _session_type(req.session_type),
            req.session_id,
            req.msg_id_begin,
            req.msg_cnt,
        )
        return msg_pb.IMGetMsgListRsp(
            user_id=req.user_id,
            session_type=req.session_type,
            session_id=req.session_id,
            msg_id_begin=req.msg_id_begin,
            msg_list=[msg_info(m) for m in msgs],
        )

    def _latest_msg_id(self, store: Storage, req: msg_pb.IMGetLatestMsgIdReq) -> Message:
        latest = store.latest_msg_id(req.user_id, _session_type(req.session_type), req.session_id)
        return msg_pb.IMGetLatestMsgIdRsp(
            user_id=req.user_id,
            session_type=req.session_type,
            session_id=req.session_id,
            latest_msg_id=latest,
        )

    def _msg_by_id(self, store: Storage, req: msg_pb.IMGetMsgByIdReq) -> Message:
        msgs = store.get_msgs_by_ids(
            req.user_id, _session_type(req.session_type), req.session_id, list(req.msg_id_list)
        )
        return msg_pb.IMGetMsgByIdRsp(
            user_id=req.user_id,
            session_type=req.session_type,
            session_id=req.session_id,
            msg_list=[msg_info(m) for m in msgs],
        )

    def _recent_sessions(self, store: Storage, req: buddy.IMRecentContactSessionReq) -> Message:
        sessions = store.recent_sessions(req.user_id, req.latest_update_time)
        rsp = buddy.IMRecentContactSessionRsp(user_id=req.user_id)
        for s in sessions:
            rsp.contact_session_list.add(
                session_id=s.session_id,
                session_type=base.SessionType.ValueType(int(s.session_type)),
                session_status=base.SessionStatusType.ValueType(int(s.status)),
                updated_time=s.updated_time,
                latest_msg_id=s.latest_msg_id,
                latest_msg_data=s.latest_msg_data,
                latest_msg_type=base.MsgType.ValueType(s.latest_msg_type or 1),
                latest_msg_from_user_id=s.latest_msg_from_user_id,
            )
        return rsp

    def _users_info(self, store: Storage, req: buddy.IMUsersInfoReq) -> Message:
        users = store.get_users(list(req.user_id_list))
        return buddy.IMUsersInfoRsp(
            user_id=req.user_id, user_info_list=[user_info(u) for u in users]
        )

    def _remove_session(self, store: Storage, req: buddy.IMRemoveSessionReq) -> Message:
        ok = store.remove_session(req.user_id, _session_type(req.session_type), req.session_id)
        return buddy.IMRemoveSessionRsp(
            user_id=req.user_id,
            result_code=0 if ok else 1,
            session_type=req.session_type,
            session_id=req.session_id,
        )

    def _all_users(self, store: Storage, req: buddy.IMAllUserReq) -> Message:
        users = store.users_updated_since(req.latest_update_time)
        latest = max((u.updated for u in users), default=req.latest_update_time)
        return buddy.IMAllUserRsp(
            user_id=req.user_id,
            latest_update_time=latest,
            user_list=[user_info(u) for u in users],
        )

    def _departments(self, store: Storage, req: buddy.IMDepartmentReq) -> Message:
        depts = store.departments_updated_since(req.latest_update_time)
        latest = max((d.updated for d in depts), default=req.latest_update_time)
        rsp = buddy.IMDepartmentRsp(user_id=req.user_id, latest_update_time=latest)
        for d in depts:
            rsp.dept_list.add(
                dept_id=d.dept_id,
                priority=d.priority,
                dept_name=d.name,
                parent_dept_id=d.parent_id,
                dept_status=base.DepartmentStatusType.ValueType(int(d.status)),
            )
        return rsp

    def _change_sign_info(self, store: Storage, req: buddy.IMChangeSignInfoReq) -> Message:
        ok = store.change_sign_info(req.user_id, req.sign_info)
        return buddy.IMChangeSignInfoRsp(
            user_id=req.user_id, result_code=0 if ok else 1, sign_info=req.sign_info
        )

    # -- groups ---------------------------------------------------------------------------

    def _normal_groups(self, store: Storage, req: group_pb.IMNormalGroupListReq) -> Message:
        groups = store.groups_of_user(req.user_id, GroupType.NORMAL)
        rsp = group_pb.IMNormalGroupListRsp(user_id=req.user_id)
        for g in groups:
            rsp.group_version_list.add(group_id=g.group_id, version=g.version)
        return rsp

    def _group_infos(self, store: Storage, req: group_pb.IMGroupInfoListReq) -> Message:
        wanted = {g.group_id: g.version for g in req.group_version_list}
        infos = store.group_infos(list(wanted), req.user_id)
        rsp = group_pb.IMGroupInfoListRsp(user_id=req.user_id)
        for g in infos:
            if g.version <= wanted.get(g.group_id, 0):
                continue  # the client's copy is current
            rsp.group_info_list.add(
                group_id=g.group_id,
                version=g.version,
                group_name=g.name,
                group_avatar=g.avatar,
                group_creator_id=g.creator_id,
                group_type=base.GroupType.ValueType(int(g.group_type)),
                shield_status=g.shield_status,
                group_member_list=list(g.members),
            )
        return rsp

    def _group_create(self, store: Storage, req: group_pb.IMGroupCreateReq) -> Message:
        info = store.create_group(
            req.user_id,
            req.group_name,
            group_type=GroupType(req.group_type),
            avatar=req.group_avatar,
            member_ids=list(req.member_id_list),
        )
        return group_pb.IMGroupCreateRsp(
            user_id=req.user_id,
            result_code=0,
            group_id=info.group_id,
            group_name=info.name,
            user_id_list=list(info.members),
        )

    def _group_change_member(self, store: Storage, req: group_pb.IMGroupChangeMemberReq) -> Message:
        changed = list(req.member_id_list)
        if req.change_type == base.GROUP_MODIFY_TYPE_ADD:
            members = store.add_group_members(req.group_id, changed)
        else:
            members = store.remove_group_members(req.group_id, changed)
        return group_pb.IMGroupChangeMemberRsp(
            user_id=req.user_id,
            change_type=req.change_type,
            result_code=0,
            group_id=req.group_id,
            cur_user_id_list=members,
            chg_user_id_list=changed,
        )

    def _group_shield(self, store: Storage, req: group_pb.IMGroupShieldReq) -> Message:
        ok = store.set_group_shield(req.group_id, req.user_id, req.shield_status)
        return group_pb.IMGroupShieldRsp(
            user_id=req.user_id, group_id=req.group_id, result_code=0 if ok else 1
        )

    def _group_get_shield(self, store: Storage, req: server_pb.IMGroupGetShieldReq) -> Message:
        statuses = store.group_shield_statuses(req.group_id, list(req.user_id))
        rsp = server_pb.IMGroupGetShieldRsp(group_id=req.group_id)
        for uid, status in statuses.items():
            rsp.shield_status_list.add(user_id=uid, group_id=req.group_id, shield_status=status)
        return rsp


__all__ = ["DbProxyServer", "StorageError"]
