"""`metamock serve` and signals, as a real process: SIGINT stops at once (no stop notice), a
signal during start-up exits 0 at once, SIGTERM serves the notice for --stop-notice seconds."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from tests.httpraw import request
from tests.netns import base_env
from tests.servers import ServeProcess, serve


def start(*args: str, source: str = "local", env: dict[str, str] | None = None) -> ServeProcess:
    """`serve` on a free port, its stderr a pipe; waits until it answers unless it is `ecs` (whose
    start-up the test interrupts)."""
    return serve(
        *args, source=source, env=env or base_env(), ready="http" if source == "local" else None,
        stderr=subprocess.PIPE,
    )  # fmt: skip


def stop(server: ServeProcess, sig: int) -> tuple[int, float]:
    began = time.monotonic()
    code = server.stop(sig, timeout=30)
    return code, time.monotonic() - began


def test_sigint_stops_at_once_without_the_notice() -> None:
    server = start("--stop-notice", "30")
    code, took = stop(server, signal.SIGINT)
    assert code == 0
    assert took < 5


async def test_sigterm_serves_the_notice_then_exits_0() -> None:
    server = start("--stop-notice", "2")
    server.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 1.5
    seen = None
    while time.monotonic() < deadline:
        resp = await request(server.port, "GET", "/latest/meta-data/spot/instance-action")
        if resp.status == 200:
            seen = resp.body
            break
    assert seen is not None and b'"terminate"' in seen
    assert server.proc.wait(timeout=30) == 0
    server.close()


def test_a_signal_during_start_up_exits_0_at_once() -> None:
    # TMDE on a closed loopback port: start-up keeps retrying for ~10 s.
    env = base_env(ECS_CONTAINER_METADATA_URI_V4="http://127.0.0.1:9/v4/task-id")
    server = start(source="ecs", env=env)
    time.sleep(1.5)
    assert server.proc.poll() is None, "start-up should still be retrying"
    code, took = stop(server, signal.SIGTERM)
    assert code == 0
    assert took < 5
    assert os.environ.get("ECS_CONTAINER_METADATA_URI_V4") is None
