"""Helpers for the scenario, control and reload tests: an in-process service, a real `serve` subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import aiohttp

from metamock.clock import Clock
from metamock.service import Service
from metamock.settings import Settings
from tests.imds_fixtures import fixture_credentials, fixture_source


@asynccontextmanager
async def scenario_service(
    tmp_path: Path,
    *,
    config: str | None = None,
    clock: Clock | None = None,
    control: bool = True,
    watch_interval: float = 0.1,
    **flags: Any,
) -> AsyncIterator[Service]:
    """A service on 127.0.0.1:<any> with the fixture task, its control socket under `tmp_path`."""
    flags.setdefault("port", 0)
    flags.setdefault("host", ["127.0.0.1"])
    if config is not None:
        path = tmp_path / "metamock.toml"
        path.write_text(config)
        flags["config"] = str(path)
    settings = Settings.load(flags, {})
    service = await Service.start(
        settings,
        clock=clock,
        source=fixture_source(fixture_credentials(clock.time() if clock else None)),
        control_socket=(tmp_path / "control.sock") if control else False,
        watch_interval=watch_interval,
    )
    try:
        yield service
    finally:
        await service.stop(stop_notice=False)


async def fetch(session: aiohttp.ClientSession, port: int, path: str) -> tuple[int, str]:
    async with session.get(f"http://127.0.0.1:{port}/latest/{path}") as resp:
        return resp.status, await resp.text()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def get(port: int, path: str, timeout: float = 2.0) -> tuple[int, str]:
    """Blocking GET on the server (stdlib, so it works from threads and subprocess tests)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/latest/{path}", timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"metamock serve exited early with {proc.returncode}")
        try:
            if get(port, "meta-data/instance-id", timeout=0.5)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError("metamock serve did not become ready")


@contextmanager
def serve_process(port: int, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """`metamock serve --source local` on 127.0.0.1:port (fake credentials, IMDS lookups disabled)."""
    env = {**os.environ, "AWS_EC2_METADATA_DISABLED": "true", "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "metamock", "serve", "--source", "local", "--host", "127.0.0.1"]
    proc = subprocess.Popen(
        [*argv, "--port", str(port), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_ready(port, proc)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
