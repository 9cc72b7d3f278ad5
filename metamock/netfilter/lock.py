"""One apply or remove at a time per network namespace: an abstract unix socket as the lock.

Why a socket and not flock: the processes to keep apart are those that share a *network
namespace* (several containers of one ECS task, each with its own /run and /tmp), so a lock
file has no common place to live. Abstract unix socket names are scoped by the network
namespace itself, so binding "\\0metamock-netfilter-lock" is exclusive exactly among those
processes, and the kernel releases it when the holder dies (SIGKILL included): no stale lock.
Python's sockets are close-on-exec, so the nft/iptables children never inherit it.
"""

from __future__ import annotations

import errno
import random
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

from metamock.errors import NetfilterError

LOCK_NAME = b"\0metamock-netfilter-lock"
LOCK_TIMEOUT = 60.0  # seconds; one apply takes well under a second, iptables waits <= 10 s


@contextmanager
def netns_lock(timeout: float = LOCK_TIMEOUT, name: bytes = LOCK_NAME) -> Iterator[None]:
    """Hold the lock of this network namespace; NetfilterError when not had within `timeout`."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    deadline = time.monotonic() + timeout
    delay = 0.005
    try:
        while True:
            try:
                sock.bind(name)
                break
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise NetfilterError(f"netfilter lock: {exc.strerror}") from exc
            if time.monotonic() >= deadline:
                raise NetfilterError(
                    f"another metamock netfilter apply/remove in this network namespace held the "
                    f"lock for more than {timeout:g} s; nothing was changed"
                )
            time.sleep(delay * (1 + random.random()))  # noqa: S311 (jitter, not a secret)
            delay = min(delay * 2, 0.1)
        yield
    finally:
        sock.close()
