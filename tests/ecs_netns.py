"""An ECS task's network view in a namespace: the fake ECS agent on 169.254.170.2:80 and helpers
to run `metamock serve` and clients in it. Everything here runs inside a namespace with only `lo`."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from tests.fakes.ecs_agent import fargate_env
from tests.netns import REPO, NetNS, base_env
from tests.servers import PY, Output, ServeProcess, serve, wait_http


def start_fake_agent(ns: NetNS, *extra: str) -> subprocess.Popen[bytes]:
    proc = ns.popen(
        [PY, "-m", "tests.fakes.ecs_agent", "--host", "169.254.170.2", "--port", "80", *extra],
        cwd=REPO, env=base_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_http("http://169.254.170.2/_calls", ns=ns, proc=proc, timeout=20)
    return proc


def serve_ecs(
    ns: NetNS,
    *args: str,
    host: str | None = None,
    port: int | None = None,
    stop_notice: float = 0,
    stdout: Output = subprocess.DEVNULL,
    stderr: Output = subprocess.PIPE,
) -> ServeProcess:
    """`metamock serve --source ecs --stop-notice N *args` with the Fargate environment in `ns`,
    once healthy (`port`: default 1338)."""
    return serve(
        "--stop-notice", f"{stop_notice:g}", *args, source="ecs", host=host, port=port, ns=ns,
        env=base_env(**fargate_env()), stdout=stdout, stderr=stderr,
    )  # fmt: skip


def agent_calls(ns: NetNS) -> dict[str, int]:
    out = ns.run(["curl", "-sf", "http://169.254.170.2/_calls"])
    result: dict[str, int] = json.loads(out.stdout)
    return result


def run_python(ns: NetNS, code: str, env: dict[str, str], timeout: float = 60) -> Any:
    """Run `code` in the namespace; it must print one JSON document on its last line."""
    proc = ns.run([PY, "-c", code], env=env, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])
