"""An ECS task's network view in a namespace: the fake ECS agent on 169.254.170.2:80 and helpers
to run `metamock serve` and clients in it. Everything here runs inside a namespace with only `lo`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

from tests.fakes.ecs_agent import fargate_env
from tests.netns import REPO, NetNS, base_env

PY = sys.executable


def wait_until(ns: NetNS, argv: list[str], timeout: float = 20.0, env: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        proc = ns.run(argv, env=env or base_env(), timeout=10)
        if proc.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{argv} never succeeded: {proc.stdout}{proc.stderr}")
        time.sleep(0.1)


def start_fake_agent(ns: NetNS, *extra: str) -> subprocess.Popen[bytes]:
    proc = ns.popen(
        [PY, "-m", "tests.fakes.ecs_agent", "--host", "169.254.170.2", "--port", "80", *extra],
        cwd=REPO, env=base_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_until(ns, ["curl", "-sf", "-o", "/dev/null", "http://169.254.170.2/_calls"])
    return proc


def start_metamock(
    ns: NetNS, *args: str, env_extra: dict[str, str] | None = None, port: int = 1338
) -> subprocess.Popen[bytes]:
    """`metamock serve --source ecs` with the Fargate environment, once healthy."""
    env = base_env(**fargate_env(), **(env_extra or {}))
    proc = ns.popen(
        [PY, "-m", "metamock", "serve", "--source", "ecs", "--port", str(port), "--stop-notice", "0", *args],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    host = args[args.index("--host") + 1] if "--host" in args else "127.0.0.1"
    wait_until(ns, [PY, "-m", "metamock", "healthcheck", "--host", host, "--port", str(port)])
    return proc


def agent_calls(ns: NetNS) -> dict[str, int]:
    out = ns.run(["curl", "-sf", "http://169.254.170.2/_calls"])
    result: dict[str, int] = json.loads(out.stdout)
    return result


def run_python(ns: NetNS, code: str, env: dict[str, str], timeout: float = 60) -> Any:
    """Run `code` in the namespace; it must print one JSON document on its last line."""
    proc = ns.run([PY, "-c", code], env=env, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])
