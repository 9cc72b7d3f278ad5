"""A raw HTTP/1.1 client over asyncio streams: sends paths byte-for-byte (no normalisation)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


async def request(
    port: int,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    host: str = "127.0.0.1",
    raw: bytes | None = None,
    timeout: float = 5.0,
) -> RawResponse:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        if raw is None:
            shown = f"[{host}]" if ":" in host else host
            lines = [f"{method} {path} HTTP/1.1", f"Host: {shown}:{port}", "Connection: close"]
            lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
            raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        writer.write(raw)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    status = int(status_line.split()[1]) if status_line else 0
    if method == "HEAD":
        body = b""
    return RawResponse(status, parsed, body)
