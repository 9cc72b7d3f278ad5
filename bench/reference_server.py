"""The reference: aiohttp's low-level server answering every request with one static body.

metamock's hot path is measured against this in the same run, on the same core, with the same
event loop, so the ratio says what metamock's routing, token check and tree cost on top of aiohttp.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from aiohttp import web


async def main(port: int, size: int) -> None:
    body = b"x" * size
    headers = {"Server": "EC2ws", "Content-Type": "text/plain"}

    async def handler(request: web.BaseRequest) -> web.Response:
        return web.Response(body=body, headers=headers)

    runner = web.ServerRunner(web.Server(handler, access_log=None))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=1339)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        uvloop.install()
    asyncio.run(main(args.port, args.size))
