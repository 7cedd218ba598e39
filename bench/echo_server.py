"""Frame-echo server for the peer benchmark in ../shared/bench (see bench/echo.sh).

The peers' contract: ``--port``, ``--reuseport``, print a line starting with
READY once listening, exit on SIGTERM. The server is imreactor's own echo
server, unchanged.
"""

from __future__ import annotations

import sys

from imreactor.servers.echo import main

if __name__ == "__main__":
    sys.exit(main())
