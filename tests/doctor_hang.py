"""Listeners that accept connections and never answer: the all-hanging case for doctor.

In-process: `async with hanging(("127.0.0.1", 0)) as ports:`. In a network namespace:
`python -m tests.doctor_hang 169.254.170.2:80 127.0.0.1:1338` (prints "ready" once listening).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


@asynccontextmanager
async def hanging(*addresses: tuple[str, int]) -> AsyncIterator[list[int]]:
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # read nothing, answer nothing, close nothing

    servers = [await asyncio.start_server(hold, host, port) for host, port in addresses]
    try:
        yield [s.sockets[0].getsockname()[1] for s in servers]
    finally:
        for writer in held:
            writer.transport.abort()
        for server in servers:
            server.close()
            await server.wait_closed()


async def _main(specs: list[str]) -> None:
    addresses = [(h, int(p)) for h, _, p in (s.rpartition(":") for s in specs)]
    async with hanging(*addresses):
        print("ready", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1:]))
