"""Helpers for the hardening tests: the real service on its own thread, blocking raw sockets, RSS.

Hypothesis drives synchronous test functions, so the service runs on an event loop in a thread
(`ServiceThread`) and the tests talk to it over plain blocking sockets, byte for byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from metamock.service import Service
from tests.imds_fixtures import running_service

REPO = Path(__file__).resolve().parent.parent
STATUS = re.compile(rb"HTTP/1\.[01] (\d{3}) ")
HEALTH = b"GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


class ErrorRecords(logging.Handler):
    """Collects ERROR and worse from aiohttp and metamock: an unhandled exception is a crash."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class ServiceThread:
    """`running_service(**flags)` on a private event loop in a daemon thread."""

    def __init__(self, **flags: Any) -> None:
        self._flags = flags
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self.service: Service | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="metamock-service", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        except BaseException as exc:  # reported by start()
            self.error = exc
            self._ready.set()
        finally:
            self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with running_service(**self._flags) as service:
            self.service = service
            self._ready.set()
            await self._stop.wait()

    @property
    def port(self) -> int:
        assert self.service is not None
        return self.service.port

    def start(self) -> ServiceThread:
        self._thread.start()
        self._ready.wait(30)
        if self.error is not None:
            raise self.error
        return self

    def call(self, fn: Any, *args: Any) -> Any:
        """Run `fn(*args)` on the service's loop and return its result."""
        done: Any = asyncio.run_coroutine_threadsafe(_call(fn, *args), self._loop)
        return done.result(10)

    def close(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


async def _call(fn: Any, *args: Any) -> Any:
    return fn(*args)


@contextlib.contextmanager
def service_thread(**flags: Any) -> Iterator[ServiceThread]:
    thread = ServiceThread(**flags).start()
    try:
        yield thread
    finally:
        thread.close()


def exchange(
    port: int, data: bytes, *, idle: float = 1.0, total: float = 5.0, half_close: bool = False
) -> bytes:
    """Send `data`, then read until the server closes, goes quiet for `idle` s, or `total` s pass."""
    with socket.create_connection(("127.0.0.1", port), timeout=total) as sock:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may close before taking it all: that is an allowed answer
        return read_all(sock, idle=idle, total=total)


def read_all(sock: socket.socket, *, idle: float = 1.0, total: float = 5.0) -> bytes:
    chunks: list[bytes] = []
    deadline = time.monotonic() + total
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(min(idle, left))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except OSError:  # reset by the server: a closed connection
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def statuses(data: bytes) -> list[int]:
    return [int(s) for s in STATUS.findall(data)]


def healthy(port: int) -> bool:
    return statuses(exchange(port, HEALTH)) == [200]


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spawn_serve(
    port: int, *extra: str, env: dict[str, str] | None = None, **kw: Any
) -> subprocess.Popen[bytes]:
    """`python -m metamock serve` (local source, fake credentials) on 127.0.0.1:`port`."""
    environ = {**os.environ, **(env or {})}
    environ["PYTHONPATH"] = str(REPO)
    argv = [sys.executable, "-m", "metamock", "serve", "--source", "local", "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--stop-notice", "0", *extra]
    kw.setdefault("stdout", subprocess.DEVNULL)
    kw.setdefault("stderr", subprocess.DEVNULL)
    return subprocess.Popen(argv, env=environ, cwd=REPO, **kw)


def wait_ready(port: int, proc: subprocess.Popen[Any] | None = None, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}")
        with contextlib.suppress(OSError):
            if healthy(port):
                return
        time.sleep(0.05)
    raise AssertionError(f"server on {port} never answered")
