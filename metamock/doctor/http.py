"""Plain HTTP probes with a hard timeout and short, secret-free failure reasons."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp


class ProbeError(Exception):
    """The request got no HTTP answer; the message says why in a few words."""


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes
    elapsed: float  # seconds

    @property
    def ms(self) -> int:
        return round(self.elapsed * 1000)

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


async def probe(method: str, url: str, *, timeout: float, headers: Mapping[str, str] | None = None) -> Reply:
    """One request, no proxy (proxies are judged by their own check), no retries."""
    started = time.monotonic()
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    try:
        async with (
            aiohttp.ClientSession(timeout=client_timeout, trust_env=False) as session,
            session.request(method, url, headers=dict(headers or {}), allow_redirects=False) as resp,
        ):
            body = await resp.read()
            return Reply(resp.status, dict(resp.headers), body, time.monotonic() - started)
    except TimeoutError as exc:
        raise ProbeError(f"no answer within {timeout:g} s") from exc
    except aiohttp.ClientConnectorError as exc:
        if isinstance(exc.os_error, ConnectionRefusedError):
            raise ProbeError("connection refused") from exc
        reason = exc.os_error.strerror or type(exc.os_error).__name__
        raise ProbeError(f"cannot connect: {reason}") from exc
    except aiohttp.ServerDisconnectedError as exc:
        raise ProbeError("connection closed without an answer") from exc
    except (aiohttp.ClientError, asyncio.IncompleteReadError, ValueError) as exc:
        raise ProbeError(f"bad answer: {type(exc).__name__}") from exc
