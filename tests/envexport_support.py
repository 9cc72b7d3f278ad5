"""Helpers shared by the env-export and sidecar tests."""

from __future__ import annotations

import time
from pathlib import Path


def wait_exec(pid: int) -> None:
    """Popen returns (vfork) before the kernel has set up the new environ; wait for it."""
    deadline = time.monotonic() + 10
    while not Path(f"/proc/{pid}/environ").read_bytes():
        assert time.monotonic() < deadline, "the process never exec'd"
        time.sleep(0.005)
