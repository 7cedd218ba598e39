"""Facts about TeamTalk ids that several layers test: message kinds, client classes, refusals."""

from __future__ import annotations

from .proto import im_base_define_pb2 as base

#: msg_type values of 1:1 messages (to_session_id is the peer's user id).
SINGLE_MSG_TYPES = frozenset({base.MSG_TYPE_SINGLE_TEXT, base.MSG_TYPE_SINGLE_AUDIO})
#: msg_type values of group messages (to_session_id is the group id).
GROUP_MSG_TYPES = frozenset({base.MSG_TYPE_GROUP_TEXT, base.MSG_TYPE_GROUP_AUDIO})

#: Login results that mean "a server is not ready yet" (worth retrying), not "refused".
NOT_READY = frozenset(
    {
        base.REFUSE_REASON_NO_MSG_SERVER,
        base.REFUSE_REASON_MSG_SERVER_FULL,
        base.REFUSE_REASON_NO_DB_SERVER,
        base.REFUSE_REASON_NO_LOGIN_SERVER,
        base.REFUSE_REASON_NO_ROUTE_SERVER,
    }
)

#: ``IMUserCntUpdate.user_action``: a user came online on (1) or left (2) a msg_server.
USER_ACTION_ADD = 1
USER_ACTION_DEL = 2


#: Device classes, each with its own number of sessions per user (msg_server's
#: ``sessions_<class>``): TeamTalk's desktop and mobile, and our web and script.
DEVICE_CLASSES = ("desktop", "mobile", "web", "script")


def device_class(client_type: int) -> str:
    """The device class of ``client_type``: bit 0x40 script, 0x20 web, 0x10 mobile,
    else desktop (so an unknown TeamTalk type below 0x10 is a desktop, as there)."""
    if client_type & 0x40:
        return "script"
    if client_type & 0x20:
        return "web"
    if client_type & 0x10:
        return "mobile"
    return "desktop"
