"""A real STS-speaking server for tests: moto_server on 127.0.0.1, here (a free port, one per
session: the `moto_server` fixture) or inside a network namespace (`start_moto_server(ns=...)`).

Use the fixture with `from tests.moto_fixture import moto_server` and a `moto_server: str` argument
(the URL). Anything that talks to it needs credentials, any will do: moto accepts all of them.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netns import NetNS
from tests.servers import free_port, wait_http

START_TIMEOUT = 40.0


def moto_server_bin() -> str:
    candidate = Path(sys.executable).parent / "moto_server"
    return str(candidate) if candidate.exists() else "/tmp/venv/bin/moto_server"


def start_moto_server(
    ns: NetNS | None = None, port: int | None = None, timeout: float = START_TIMEOUT
) -> tuple[subprocess.Popen[bytes], str]:
    """Start moto_server (in `ns` when given; `port` default: a free one here, 5000 in `ns`) and
    return (process, URL) once it answers."""
    port = port or (5000 if ns is not None else free_port())
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    argv = [moto_server_bin(), "-p", str(port), "-H", "127.0.0.1"]
    quiet = subprocess.DEVNULL
    if ns is None:
        proc = subprocess.Popen(argv, env=env, stdout=quiet, stderr=quiet)
    else:
        proc = ns.popen(argv, env=env, stdout=quiet, stderr=quiet)
    try:
        wait_http(f"{url}/moto-api/data.json", ns=ns, proc=proc, timeout=timeout)
    except BaseException:
        stop_moto_server(proc)
        raise
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
