"""Clients for the scenario, control and reload tests (the servers are in tests/servers.py)."""

from __future__ import annotations

import urllib.error
import urllib.request

import aiohttp


async def fetch(session: aiohttp.ClientSession, port: int, path: str) -> tuple[int, str]:
    async with session.get(f"http://127.0.0.1:{port}/latest/{path}") as resp:
        return resp.status, await resp.text()


def get(port: int, path: str, timeout: float = 2.0) -> tuple[int, str]:
    """Blocking GET on the server (stdlib, so it works from threads and subprocess tests)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/latest/{path}", timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
