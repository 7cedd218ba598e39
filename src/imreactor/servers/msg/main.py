"""``imreactor msg-server -c FILE``: run one msg_server."""

from __future__ import annotations

from ..runner import RoleMain
from .config import MsgConfig
from .server import MsgServer

main = RoleMain("msg_server", "msg", MsgConfig, MsgServer, lambda s: f"port={s.port}")
add_arguments = main.add_arguments
run = main.run
