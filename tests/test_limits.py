"""Connection limits (metamock.imds.limits) on a real aiohttp server over loopback sockets."""

from __future__ import annotations

import asyncio
import resource
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

from metamock.imds.limits import ConnectionLimits, LimitedServer, default_max_connections, limited
from metamock.imds.server import make_server

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


async def _ok(request: web.BaseRequest) -> web.Response:
    return web.Response(body=b"ok")


@asynccontextmanager
async def limited_server(**limits: Any) -> AsyncIterator[tuple[LimitedServer, int]]:
    server = LimitedServer(_ok, limits=ConnectionLimits(**limits), access_log=None)
    runner = web.ServerRunner(server)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield server, site.port
    finally:
        await runner.cleanup()


async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def _response(reader: asyncio.StreamReader) -> bytes:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    await reader.readexactly(length)
    return head


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> float:
    """Seconds until the server closed the connection (reading and dropping anything sent)."""
    start = time.monotonic()
    while True:
        try:
            chunk = await asyncio.wait_for(reader.read(65536), seconds)
        except ConnectionError:
            break
        if not chunk:
            break
    return time.monotonic() - start


async def test_connections_beyond_the_cap_are_closed_at_once_then_admitted_again() -> None:
    async with limited_server(max_connections=2) as (server, port):
        held = [await _connect(port) for _ in range(2)]
        for reader, writer in held:
            writer.write(REQUEST)
            assert (await _response(reader)).startswith(b"HTTP/1.1 200")
        reader, writer = await _connect(port)
        assert await _closed_within(reader, 2) < 1
        writer.close()
        assert server.guard.refused == 1
        held[0][1].close()
        await asyncio.sleep(0.1)
        reader, writer = await _connect(port)
        writer.write(REQUEST)
        assert (await _response(reader)).startswith(b"HTTP/1.1 200")
        writer.close()
        held[1][1].close()


async def test_a_slowloris_head_is_cut_at_the_header_deadline() -> None:
    async with limited_server(header_timeout=0.4, idle_timeout=5) as (server, port):
        reader, writer = await _connect(port)

        async def trickle() -> None:
            for byte in b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100:
                writer.write(bytes([byte]))
                await asyncio.sleep(0.05)

        dripping = asyncio.ensure_future(trickle())
        took = await _closed_within(reader, 3)
        dripping.cancel()
        writer.close()
        assert 0.3 < took < 2.0
        assert server.guard.expired == 1


async def test_a_silent_connection_is_closed_at_the_header_deadline() -> None:
    async with limited_server(header_timeout=0.3, idle_timeout=5) as (_, port):
        reader, writer = await _connect(port)
        took = await _closed_within(reader, 3)
        writer.close()
        assert 0.2 < took < 2.0


async def test_keep_alive_requests_outlive_the_header_deadline_then_idle_closes() -> None:
    async with limited_server(header_timeout=0.3, idle_timeout=0.8) as (_, port):
        reader, writer = await _connect(port)
        start = time.monotonic()
        while time.monotonic() - start < 1.2:
            writer.write(REQUEST)
            assert (await _response(reader)).startswith(b"HTTP/1.1 200")
            await asyncio.sleep(0.2)
        took = await _closed_within(reader, 3)
        writer.close()
        assert 0.5 < took < 2.5


async def test_a_terminator_split_across_reads_completes_the_request() -> None:
    async with limited_server(header_timeout=0.5, idle_timeout=5) as (_, port):
        reader, writer = await _connect(port)
        for piece in (REQUEST[:-3], REQUEST[-3:-1], REQUEST[-1:]):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.05)
        assert (await _response(reader)).startswith(b"HTTP/1.1 200")
        # Now idle (5 s), not in a head (0.5 s): still open after the header deadline.
        await asyncio.sleep(0.8)
        writer.write(REQUEST)
        assert (await _response(reader)).startswith(b"HTTP/1.1 200")
        writer.close()


async def test_an_endless_head_is_cut_at_the_byte_limit() -> None:
    async with limited_server(max_header_bytes=8192) as (server, port):
        reader, writer = await _connect(port)
        writer.write(b"GET / HTTP/1.1\r\n")

        async def flood() -> None:
            for n in range(100):
                writer.write(f"X-H{n}: {'a' * 1000}\r\n".encode())
                await writer.drain()
                await asyncio.sleep(0.001)

        with pytest.raises(ConnectionError):
            await flood()
        assert await _closed_within(reader, 2) < 1
        writer.close()
        assert server.guard.expired == 1


async def test_pipelined_requests_are_all_answered() -> None:
    async with limited_server(header_timeout=0.5) as (_, port):
        reader, writer = await _connect(port)
        writer.write(REQUEST * 50)
        for _ in range(50):
            assert (await _response(reader)).startswith(b"HTTP/1.1 200")
        writer.close()


async def test_the_sweeper_stops_when_no_connection_is_left() -> None:
    async with limited_server(header_timeout=0.2, idle_timeout=0.2) as (server, port):
        reader, writer = await _connect(port)
        await _closed_within(reader, 2)
        writer.close()
        await asyncio.sleep(0.3)
        assert not server.guard.live
        assert server.guard._sweeper is None


def test_the_limits_hold_on_uvloop() -> None:
    """`metamock serve` runs on uvloop when installed: the same protocol wrapper, its transports."""
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> None:
        assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
        async with limited_server(max_connections=2, header_timeout=0.4, idle_timeout=5) as (server, port):
            reader, writer = await _connect(port)
            for piece in (REQUEST * 3)[:-1], REQUEST[-1:]:  # pipelined, terminator split
                writer.write(piece)
                await asyncio.sleep(0.05)
            for _ in range(3):
                assert (await _response(reader)).startswith(b"HTTP/1.1 200")
            slow_reader, slow_writer = await _connect(port)
            slow_writer.write(b"GET / HTTP/1.1\r\n")
            refused_reader, refused_writer = await _connect(port)
            assert await _closed_within(refused_reader, 2) < 1
            assert 0.3 < await _closed_within(slow_reader, 3) < 2.0
            for w in (writer, slow_writer, refused_writer):
                w.close()
            assert server.guard.refused == 1
            assert server.guard.expired == 1

    uvloop.run(scenario())


async def test_the_plain_factory_works_with_create_server() -> None:
    server = web.Server(_ok, access_log=None)
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(limited(server, ConnectionLimits(header_timeout=0.3)), "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        reader, writer = await _connect(port)
        writer.write(REQUEST)
        assert (await _response(reader)).startswith(b"HTTP/1.1 200")
        writer.close()
        silent_reader, silent_writer = await _connect(port)
        assert await _closed_within(silent_reader, 3) < 2.0
        silent_writer.close()
    finally:
        listener.close()
        await server.shutdown(1)
        await listener.wait_closed()


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="positive"):
        ConnectionLimits(max_connections=0)
    with pytest.raises(ValueError, match="positive"):
        ConnectionLimits(header_timeout=0)
    assert ConnectionLimits().sweep_interval == 1.0
    assert ConnectionLimits(header_timeout=0.4).sweep_interval == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("soft", "cap"), [(resource.RLIM_INFINITY, 4096), (1_048_576, 4096), (1024, 960), (40, 16)]
)
def test_the_default_cap_follows_the_open_files_limit(
    monkeypatch: pytest.MonkeyPatch, soft: int, cap: int
) -> None:
    monkeypatch.setattr(resource, "getrlimit", lambda _which: (soft, resource.RLIM_INFINITY))
    assert default_max_connections() == cap
    assert ConnectionLimits().max_connections == cap  # the production limits are the defaults


async def test_make_server_takes_the_limits_it_is_given() -> None:
    short = ConnectionLimits(header_timeout=0.3)
    assert make_server(_ok, limits=short).limits is short
    assert make_server(_ok).limits == ConnectionLimits()
