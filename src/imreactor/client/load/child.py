"""A child of ``imreactor load --processes N``: ``python -m imreactor.client.load.child``.

One ordinary :class:`~.driver.LoadRun` on its own loop, talking to its parent
(:mod:`.multi`, whose docstring has the protocol) in JSON lines: its
:class:`~.options.LoadOptions` on stdin; ``{"ready": ...}`` once logged in, then
sending on ``go``; ``{"result": ...}`` at the end, with its connections open until
``bye`` (or EOF: the parent is gone).
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from typing import Any

from .cli import execute
from .driver import LoadRun
from .options import LoadOptions


def child_main() -> int:
    """A child's whole life: options on stdin, lines on stdout (module docstring)."""
    options = LoadOptions(**json.loads(sys.stdin.readline()))
    out = sys.stdout

    def write(obj: dict[str, Any]) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    def prepare(run: LoadRun) -> None:
        def before_sending(start: Callable[[], None]) -> None:
            write({"ready": {"logins_ok": run.logins_ok, "connections": len(run.endpoints)}})

            def wait_for_go() -> None:
                go = sys.stdin.readline().strip() == "go"
                # Without "go" the parent is gone: finish (and report) without sending.
                run.loop.call_soon_threadsafe(start if go else run.interrupt)

            threading.Thread(target=wait_for_go, name="load-go", daemon=True).start()

        run.before_sending = before_sending

    def report(run: LoadRun) -> None:
        write(
            {
                "result": {
                    "report": run.report().to_json(),
                    "ack_s": run.ack_samples,
                    "delivery_s": run.delivery_samples,
                    "t_start": run.t_start,
                    "t_logins_done": run.t_logins_done,
                    "t_send_start": run.t_send_start,
                    "t_send_end": run.t_send_end,
                    "t_last_delivery": run.t_last_delivery,
                }
            }
        )
        sys.stdin.readline()  # "bye", or EOF: the parent is gone

    execute(options, prepare=prepare, before_shutdown=report)
    return 0


if __name__ == "__main__":
    sys.exit(child_main())
