"""A real STS-speaking server for tests: moto_server on 127.0.0.1, a free port, one per session.

Use it with `from tests.moto_fixture import moto_server` and a `moto_server: str` argument (the
URL). Anything that talks to it needs credentials, any will do: moto accepts all of them.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import free_port

START_TIMEOUT = 30.0


def _moto_server_bin() -> str:
    candidate = Path(sys.executable).parent / "moto_server"
    return str(candidate) if candidate.exists() else "/tmp/venv/bin/moto_server"


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/moto-api/data.json", timeout=1) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start_moto_server() -> tuple[subprocess.Popen[bytes], str]:
    """Start moto_server and return (process, URL) once it answers."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    proc = subprocess.Popen(
        [_moto_server_bin(), "-p", str(port), "-H", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    deadline = time.monotonic() + START_TIMEOUT
    while not _answers(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_moto_server(proc)
            raise RuntimeError(f"moto_server did not start on {url}")
        time.sleep(0.1)
    return proc, url


def stop_moto_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """The URL of a moto_server started for this test session (killed at its end)."""
    proc, url = start_moto_server()
    try:
        yield url
    finally:
        stop_moto_server(proc)
