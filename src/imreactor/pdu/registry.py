"""Which protobuf message class travels under which (service id, command id).

The table is derived once, at import, from the generated schema modules: each message whose
``.proto`` declares ``option (IM.BaseDefine.command_id) = N`` is registered under command ``N``,
and the service id is the one whose command enum (``LoginCmdID``, ``BuddyListCmdID``, ...) lists
``N`` -- the only irregular part of the naming, kept in the small table
``_SERVICE_OF_COMMAND_ENUM``. Building the table fails loudly (``SchemaError``) if a declared
command id is in no command enum, or if two messages claim the same command.

Every command id of every command enum has exactly one message class; ``SID_INTERNAL`` has no
commands. ``IM.Server``'s server-to-server messages travel under ``SID_OTHER``, as their command
ids (``OtherCmdID``) say.

One message type, one command: ``ids_of`` returns the single pair the schema declares for a
class. The TeamTalk protocol uses no message type under two command ids; if a peer ever needs
one type under another command, pass that command id to the framing layer explicitly: the
registry stays a bijection so that a class and a pair always name each other.

The id enums are re-exported below as the generated enum wrappers: ``ServiceID.SID_LOGIN``,
``OtherCmdID.CID_OTHER_HEARTBEAT`` and so on are plain ``int`` values at run time (typed as
``NewType``s of ``int``), and ``ServiceID.Name(n)`` gives a value's name.

Everything here is immutable after import and safe to use from any thread.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import MappingProxyType, ModuleType
from typing import Final

from google.protobuf.message import Message

from imreactor.pdu.proto import (
    im_base_define_pb2,
    im_buddy_pb2,
    im_file_pb2,
    im_group_pb2,
    im_login_pb2,
    im_message_pb2,
    im_other_pb2,
    im_server_pb2,
    im_switch_service_pb2,
)

__all__ = [
    "COMMANDS",
    "BuddyListCmdID",
    "FileCmdID",
    "GroupCmdID",
    "LoginCmdID",
    "MessageCmdID",
    "OtherCmdID",
    "SchemaError",
    "ServiceID",
    "SwitchServiceCmdID",
    "command_ids",
    "command_name",
    "ids_of",
    "message_class",
    "message_class_for_command",
    "service_of",
]

ServiceID = im_base_define_pb2.ServiceID
LoginCmdID = im_base_define_pb2.LoginCmdID
BuddyListCmdID = im_base_define_pb2.BuddyListCmdID
MessageCmdID = im_base_define_pb2.MessageCmdID
GroupCmdID = im_base_define_pb2.GroupCmdID
FileCmdID = im_base_define_pb2.FileCmdID
SwitchServiceCmdID = im_base_define_pb2.SwitchServiceCmdID
OtherCmdID = im_base_define_pb2.OtherCmdID

# The one place where names do not follow a rule: MessageCmdID belongs to SID_MSG.
_SERVICE_OF_COMMAND_ENUM: Final[Mapping[str, int]] = {
    "LoginCmdID": ServiceID.SID_LOGIN,
    "BuddyListCmdID": ServiceID.SID_BUDDY_LIST,
    "MessageCmdID": ServiceID.SID_MSG,
    "GroupCmdID": ServiceID.SID_GROUP,
    "FileCmdID": ServiceID.SID_FILE,
    "SwitchServiceCmdID": ServiceID.SID_SWITCH_SERVICE,
    "OtherCmdID": ServiceID.SID_OTHER,
}

# Every generated module; messages without the command_id option (the IM.BaseDefine building
# blocks such as UserInfo) are simply not registered.
_SCHEMA_MODULES: Final[tuple[ModuleType, ...]] = (
    im_base_define_pb2,
    im_login_pb2,
    im_buddy_pb2,
    im_message_pb2,
    im_group_pb2,
    im_switch_service_pb2,
    im_other_pb2,
    im_server_pb2,
    im_file_pb2,
)


class SchemaError(RuntimeError):
    """The generated schema breaks a rule the registry relies on (raised at import)."""


def _command_enums() -> dict[int, tuple[str, int]]:
    """Return ``{command id: (enum value name, service id)}`` over all command enums."""
    commands: dict[int, tuple[str, int]] = {}
    for enum in im_base_define_pb2.DESCRIPTOR.enum_types_by_name.values():
        if not enum.name.endswith("CmdID"):
            continue
        service_id = _SERVICE_OF_COMMAND_ENUM.get(enum.name)
        if service_id is None:
            raise SchemaError(f"command enum {enum.name} has no service in the registry")
        for value in enum.values:
            if value.number in commands:
                raise SchemaError(f"command id 0x{value.number:04x} is in two command enums")
            commands[value.number] = (value.name, service_id)
    return commands


def _schema_messages() -> Iterator[tuple[int, type[Message]]]:
    """Yield ``(declared command id, class)`` for every message that declares one."""
    for module in _SCHEMA_MODULES:
        for descriptor in module.DESCRIPTOR.message_types_by_name.values():
            options = descriptor.GetOptions()
            if not options.HasExtension(im_base_define_pb2.command_id):
                continue
            cls = getattr(module, descriptor.name)
            if not (isinstance(cls, type) and issubclass(cls, Message)):
                raise SchemaError(f"{module.__name__}.{descriptor.name} is not a message class")
            yield options.Extensions[im_base_define_pb2.command_id], cls


def _build() -> tuple[dict[tuple[int, int], type[Message]], dict[type[Message], tuple[int, int]]]:
    commands = _command_enums()
    by_ids: dict[tuple[int, int], type[Message]] = {}
    by_class: dict[type[Message], tuple[int, int]] = {}
    for command_id, cls in _schema_messages():
        if command_id not in commands:
            raise SchemaError(f"{cls.DESCRIPTOR.full_name}: 0x{command_id:04x} is in no CmdID enum")
        ids = (commands[command_id][1], command_id)
        if ids in by_ids:
            other = by_ids[ids].DESCRIPTOR.full_name
            raise SchemaError(f"{cls.DESCRIPTOR.full_name} and {other} claim 0x{command_id:04x}")
        by_ids[ids] = cls
        by_class[cls] = ids
    return by_ids, by_class


_COMMAND_INFO: Final = _command_enums()
_BY_IDS, _BY_CLASS = _build()
_BY_COMMAND: Final[Mapping[int, type[Message]]] = {cid: cls for (_, cid), cls in _BY_IDS.items()}

COMMANDS: Final[Mapping[tuple[int, int], type[Message]]] = MappingProxyType(_BY_IDS)
"""The registry itself: ``{(service_id, command_id): message class}``, read-only."""


def message_class(service_id: int, command_id: int) -> type[Message] | None:
    """Return the message class of a PDU with these header ids, or None if the pair is unknown.

    Both ids must match: a known command id under the wrong service id gives None. Peers of the
    original implementation dispatch on the command id alone; use message_class_for_command to
    do the same.
    """
    return _BY_IDS.get((service_id, command_id))


def message_class_for_command(command_id: int) -> type[Message] | None:
    """Return the message class registered for ``command_id`` whatever its service, or None.

    Command ids are unique across services (each one's high byte is its service id), so the
    answer is unambiguous.
    """
    return _BY_COMMAND.get(command_id)


def ids_of(message: Message | type[Message]) -> tuple[int, int]:
    """Return ``(service_id, command_id)`` that a message (or message class) travels under.

    The pair is the one the message's ``.proto`` declares; it is the same for every instance.
    Raises KeyError for a class that is not a PDU body (e.g. IM.BaseDefine.UserInfo).
    """
    cls = message if isinstance(message, type) else type(message)
    try:
        return _BY_CLASS[cls]
    except KeyError:
        raise KeyError(f"{cls.DESCRIPTOR.full_name} is not sent as a PDU") from None


def service_of(command_id: int) -> int | None:
    """Return the service id whose command enum lists ``command_id``, or None if none does."""
    info = _COMMAND_INFO.get(command_id)
    return None if info is None else info[1]


def command_name(command_id: int) -> str:
    """Return the enum name of a command id (``CID_OTHER_HEARTBEAT``), or ``0x....`` if unknown.

    Meant for log lines; never raises.
    """
    info = _COMMAND_INFO.get(command_id)
    return f"0x{command_id:04x}" if info is None else info[0]


def command_ids() -> frozenset[int]:
    """Return every command id listed in the command enums."""
    return frozenset(_COMMAND_INFO)
