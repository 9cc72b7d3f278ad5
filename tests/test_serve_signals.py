"""`metamock serve` and signals, as a real process: SIGINT stops at once (no stop notice), a
signal during start-up exits 0 at once, SIGTERM serves the notice for --stop-notice seconds."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from tests.ecs_netns import base_env
from tests.httpraw import request
from tests.servers import free_port


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "metamock", "serve", "--host", "127.0.0.1", *args],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def wait_ready(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def stop(proc: subprocess.Popen[bytes], sig: int) -> tuple[int, float]:
    began = time.monotonic()
    proc.send_signal(sig)
    code = proc.wait(timeout=30)
    assert proc.stderr is not None
    proc.stderr.close()
    return code, time.monotonic() - began


def test_sigint_stops_at_once_without_the_notice() -> None:
    port = free_port()
    proc = start(["--source", "local", "--port", str(port), "--stop-notice", "30"], base_env())
    wait_ready(port)
    code, took = stop(proc, signal.SIGINT)
    assert code == 0
    assert took < 5


async def test_sigterm_serves_the_notice_then_exits_0() -> None:
    port = free_port()
    proc = start(["--source", "local", "--port", str(port), "--stop-notice", "2"], base_env())
    wait_ready(port)
    proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 1.5
    seen = None
    while time.monotonic() < deadline:
        resp = await request(port, "GET", "/latest/meta-data/spot/instance-action")
        if resp.status == 200:
            seen = resp.body
            break
    assert seen is not None and b'"terminate"' in seen
    assert proc.wait(timeout=30) == 0
    assert proc.stderr is not None
    proc.stderr.close()


def test_a_signal_during_start_up_exits_0_at_once() -> None:
    # TMDE on a closed loopback port: start-up keeps retrying for ~10 s.
    env = base_env(ECS_CONTAINER_METADATA_URI_V4="http://127.0.0.1:9/v4/task-id")
    proc = start(["--source", "ecs", "--port", str(free_port())], env)
    time.sleep(1.5)
    assert proc.poll() is None, "start-up should still be retrying"
    code, took = stop(proc, signal.SIGTERM)
    assert code == 0
    assert took < 5
    assert os.environ.get("ECS_CONTAINER_METADATA_URI_V4") is None
