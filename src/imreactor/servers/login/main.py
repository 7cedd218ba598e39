"""``imreactor login-server -c FILE``: run login_server alone."""

from __future__ import annotations

from ..runner import RoleMain
from .config import LoginConfig
from .server import LoginServer

main = RoleMain(
    "login_server",
    "login",
    LoginConfig,
    LoginServer,
    lambda s: " ".join(f"{k}={v}" for k, v in s.ports.items()),
)
add_arguments = main.add_arguments
run = main.run
