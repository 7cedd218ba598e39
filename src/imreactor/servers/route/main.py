"""``imreactor route-server -c FILE``: run route_server alone."""

from __future__ import annotations

from ..runner import RoleMain
from .config import RouteConfig
from .server import RouteServer

main = RoleMain(
    "route_server",
    "route",
    RouteConfig,
    RouteServer,
    lambda s: " ".join(f"{k}={v}" for k, v in s.ports.items()),
)
add_arguments = main.add_arguments
run = main.run
