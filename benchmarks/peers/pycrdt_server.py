"""pycrdt's own y-websocket server (pycrdt-websocket) served by hypercorn, for
benchmarks/server_fanout.py: `python benchmarks/peers/pycrdt_server.py --port 1234`.

A `WebsocketServer` (rooms in memory, no store, rooms deleted when their last client
leaves) behind `ASGIServer`, the way pycrdt-websocket documents serving it over
ASGI; hypercorn with its defaults otherwise (access log off).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal

from hypercorn.asyncio import serve
from hypercorn.config import Config
from pycrdt.websocket import ASGIServer, WebsocketServer


async def main(host: str, port: int) -> None:
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    websocket_server = WebsocketServer(log=logging.getLogger("pycrdt_websocket"))
    async with websocket_server:
        app = ASGIServer(websocket_server)
        print(f"pycrdt-websocket listening on ws://{host}:{port}", flush=True)
        await serve(app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1234)
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args()
    logging.basicConfig(level=args.log_level)
    # On SIGTERM, the WebsocketServer's task group is cancelled on the way out: not an error.
    with contextlib.suppress(asyncio.CancelledError, KeyboardInterrupt):
        asyncio.run(main(args.host, args.port))
