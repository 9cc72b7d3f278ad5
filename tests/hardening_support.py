"""Helpers for the hardening tests: blocking raw sockets, byte for byte, and RSS.

Hypothesis drives synchronous test functions, so the service runs on an event loop in a thread
(`tests.servers.service_thread`) and the tests talk to it over plain blocking sockets.
"""

from __future__ import annotations

import logging
import re
import socket
import time
from pathlib import Path

STATUS = re.compile(rb"HTTP/1\.[01] (\d{3}) ")
HEALTH = b"GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


class ErrorRecords(logging.Handler):
    """Collects ERROR and worse from aiohttp and metamock: an unhandled exception is a crash."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


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
