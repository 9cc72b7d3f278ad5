"""Connection-level limits for the IMDS listeners: a connection cap, a header deadline, idle close.

aiohttp bounds a request line and each header field, but not how long a client may take to send
them, nor how many connections may be open: a slowloris client (a byte every few seconds) or
thousands of idle sockets would hold memory and file descriptors for an hour (aiohttp's default
keep-alive is 3630 s). `LimitedServer` is an aiohttp `web.Server` whose protocol factory wraps
each connection's `RequestHandler` in a thin protocol that:

- refuses (closes at once) connections beyond `max_connections`, across all listeners sharing it;
- closes a connection whose request line and headers are not complete `header_timeout` seconds
  after the connection opened or after the request's first byte arrived;
- closes a connection idle for `idle_timeout` seconds after its last complete request;
- closes a connection that sends more than `max_header_bytes` without ending its headers (also
  bounds request bodies: no IMDS path takes one).

The end of the headers is found by looking for CRLF CRLF in the bytes as they arrive (a 3-byte
tail carries a terminator split across reads). Deadlines are numbers enforced by one sweeper
timer per server that runs only while connections are open, so a request costs no timer call;
the hot path (an idle keep-alive connection sending whole requests) costs one `endswith` and a
flag the sweeper turns into a new idle deadline. Idle time is counted from the end of a
request's headers, to within a sweep: metamock's handler answers within its bounded credential
wait (0.5 s), far below it.

    server = LimitedServer(handler, limits=ConnectionLimits(), access_log=None)
    runner = web.ServerRunner(server)          # TCPSite works unchanged
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger(__name__)

_END = b"\r\n\r\n"


def default_max_connections() -> int:
    """4096 concurrent connections, or fewer when the open-files limit is lower: past that limit
    accept() fails with EMFILE in a loop, worse than closing the newest connection at once."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 4096
    return max(16, min(4096, soft - 64))


@dataclass(frozen=True)
class ConnectionLimits:
    """Per-server limits. The defaults are the production limits (`metamock serve` runs with
    `ConnectionLimits()`); they fit a sidecar serving one task's processes."""

    max_connections: int = field(default_factory=default_max_connections)
    header_timeout: float = 10.0
    idle_timeout: float = 30.0
    max_header_bytes: int = 65536

    def __post_init__(self) -> None:
        if self.max_connections < 1 or self.max_header_bytes < 4:
            raise ValueError("max_connections and max_header_bytes must be positive")
        if self.header_timeout <= 0 or self.idle_timeout <= 0:
            raise ValueError("timeouts must be positive")

    @property
    def sweep_interval(self) -> float:
        """How often deadlines are checked: a quarter of the shorter timeout, at most 1 s."""
        return min(self.header_timeout, self.idle_timeout, 4.0) / 4


class ConnectionGuard:
    """The live connections of one server (all its listeners) and the sweeper enforcing deadlines."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.live: set[LimitedProtocol] = set()
        self.refused = 0  # connections closed at once because the cap was reached
        self.expired = 0  # connections closed by a deadline or the header byte limit
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._full = False

    def admit(self, conn: LimitedProtocol) -> bool:
        if len(self.live) >= self.limits.max_connections:
            self.refused += 1
            if not self._full:  # once per episode: a flood must not flood the log too
                self._full = True
                log.warning(
                    "connection limit (%d) reached; refusing new connections", self.limits.max_connections
                )
            return False
        self._full = False
        self.live.add(conn)
        if self._sweeper is None:
            self._loop = asyncio.get_running_loop()
            self._sweeper = self._loop.call_later(self.limits.sweep_interval, self._sweep)
        return True

    def now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def release(self, conn: LimitedProtocol) -> None:
        self.live.discard(conn)

    def _sweep(self) -> None:
        self._sweeper = None
        assert self._loop is not None
        now = self._loop.time()
        expired = []
        for conn in self.live:
            if conn.fresh:
                conn.renew(now)
            elif conn.deadline <= now:
                expired.append(conn)
        for conn in expired:
            conn.expire()
        if self.live:
            self._sweeper = self._loop.call_later(self.limits.sweep_interval, self._sweep)

    def close(self) -> None:
        """Stop the sweeper (the runner closes the connections themselves)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None


class LimitedProtocol(asyncio.Protocol):
    """One connection: tracks where the client is in its request, then hands bytes to aiohttp."""

    __slots__ = ("_guard", "_inner", "_make", "_pending", "_tail", "_transport", "deadline", "fresh")

    def __init__(self, guard: ConnectionGuard, make: Callable[[], RequestHandler]) -> None:
        self._guard = guard
        self._make = make
        self._inner: RequestHandler | None = None
        self._transport: asyncio.BaseTransport | None = None
        self._pending = 0  # bytes of an unfinished request head; -1 when between requests
        self._tail = b""
        self.fresh = False
        self.deadline = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._guard.admit(self):
            transport.close()
            return
        self._transport = transport
        self.deadline = self._guard.now() + self._guard.limits.header_timeout
        self._inner = self._make()  # only admitted connections cost a RequestHandler
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        inner = self._inner
        if inner is None:
            return
        if self._pending < 0 and data.endswith(_END):
            # The hot path: an idle keep-alive connection sends whole requests. The sweeper
            # renews the idle deadline when it sees `fresh`, so this costs no clock read.
            self.fresh = True
            inner.data_received(data)
            return
        self._track(data)
        if self._pending > self._guard.limits.max_header_bytes:
            self.expire()
            return
        inner.data_received(data)

    def _track(self, data: bytes) -> None:
        """Where the client is after `data`: between requests, or `_pending` bytes into a head."""
        end = data.rfind(_END)
        if end >= 0:
            end += 4
        elif self._pending >= 0 and self._tail:  # a terminator split across reads
            joint = (self._tail + data[:3]).find(_END)
            if joint >= 0:
                end = joint + 4 - len(self._tail)
        limits = self._guard.limits
        if end >= 0:
            trailing = len(data) - end
            if trailing:  # the next (pipelined) request has begun
                self._pending = trailing
                self.deadline = self._guard.now() + limits.header_timeout
            else:
                self._pending = -1
                self.deadline = self._guard.now() + limits.idle_timeout
        elif self._pending < 0:  # first bytes of a new request on an idle connection
            self._pending = len(data)
            self.deadline = self._guard.now() + limits.header_timeout
        else:
            self._pending += len(data)
        if self._pending < 0:
            self._tail = b""
        else:
            self._tail = data[-3:] if len(data) >= 3 else (self._tail + data)[-3:]

    def renew(self, now: float) -> None:
        """Called by the sweeper: an idle connection that served requests since the last sweep."""
        self.fresh = False
        if self._pending < 0:
            self.deadline = now + self._guard.limits.idle_timeout

    def expire(self) -> None:
        """Close now: a deadline passed or the head grew too large."""
        self._guard.expired += 1
        self._guard.release(self)
        if self._inner is not None:
            self._inner.force_close()
        elif self._transport is not None:
            self._transport.close()

    def eof_received(self) -> bool | None:
        if self._inner is not None:
            self._inner.eof_received()
        return None  # as aiohttp: a half-closed client gets its connection closed

    def connection_lost(self, exc: Exception | None) -> None:
        self._guard.release(self)
        inner, self._inner = self._inner, None
        if inner is not None:
            inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


def limited(server: web.Server, limits: ConnectionLimits | None = None) -> Callable[[], asyncio.Protocol]:
    """A protocol factory for `loop.create_server` serving `server` within `limits` (for code
    that does not go through aiohttp's runner; `LimitedServer` is the runner-friendly form)."""
    guard = ConnectionGuard(limits or ConnectionLimits())
    return lambda: LimitedProtocol(guard, server)


class LimitedServer(web.Server):
    """aiohttp's low-level server with connection limits; a drop-in for `web.Server`.

    aiohttp's own keep-alive timer is set to `idle_timeout` too, so either closes an idle socket.
    """

    def __init__(
        self,
        handler: Callable[..., Any],
        *,
        limits: ConnectionLimits | None = None,
        **kwargs: Any,
    ) -> None:
        self.limits = limits or ConnectionLimits()
        kwargs.setdefault("keepalive_timeout", self.limits.idle_timeout)
        super().__init__(handler, **kwargs)
        self.guard = ConnectionGuard(self.limits)
        self._factory = super().__call__

    # aiohttp's sites call the server to make each connection's protocol; ours wraps theirs.
    def __call__(self) -> LimitedProtocol:  # type: ignore[override]
        return LimitedProtocol(self.guard, self._factory)

    async def shutdown(self, timeout: float | None = None) -> None:
        self.guard.close()
        await super().shutdown(timeout)
