"""``imreactor msfs -c FILE``: run the small-file store alone."""

from __future__ import annotations

from ..runner import RoleMain
from .config import MsfsConfig
from .server import MsfsServer

main = RoleMain(
    "msfs",
    "msfs",
    MsfsConfig,
    MsfsServer,
    lambda s: " ".join(f"{k}={v}" for k, v in s.ports.items()),
)
add_arguments = main.add_arguments
run = main.run
