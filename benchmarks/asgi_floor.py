"""The HTTP floor of benchmarks/server.py: an ASGI app served like ``mpseal serve`` serves
the update server (uvicorn, uvloop, the same protocol and limits, the same workers), which
reads a check and answers a check's no-update bytes without the update server: no
authentication, no database, no rollout. ``MPSEAL_BENCH_BURN_US`` microseconds of CPU
(this thread's own time, spun) are spent on each request first.

What it measures: how many checks a second this machine's server stack and load generator
allow when the app costs nothing, or a given CPU time, per request. The update server's
checks/s read against it are a figure of the code, not of the machine.

Run (by benchmarks/server.py): python benchmarks/asgi_floor.py PORT WORKERS
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

BODY = b'{"update":false,"timestamp":"timestamp/stable.mpst","root_version":1}'
HEADERS = [(b"content-length", b"%d" % len(BODY)), (b"content-type", b"application/json")]
BURN_SECONDS = float(os.environ.get("MPSEAL_BENCH_BURN_US", "0")) / 1e6


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if BURN_SECONDS:
        end = time.thread_time() + BURN_SECONDS
        while time.thread_time() < end:
            pass
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


def main() -> None:
    import uvicorn

    from mpseal.server.run import ConnectionLimits, RunOptions, uvicorn_kwargs

    port, workers = int(sys.argv[1]), int(sys.argv[2])
    options = RunOptions(port=port, workers=workers, limits=ConnectionLimits(connections_max=4096))
    kw = {**uvicorn_kwargs(options), "log_level": "warning"}
    uvicorn.run("asgi_floor:app", app_dir=os.path.dirname(__file__), workers=workers, **kw)


if __name__ == "__main__":
    main()
