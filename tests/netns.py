"""Throwaway network namespaces with only `lo`, for the test suite and the benchmarks.

Nothing sent inside one can leave the machine: real IMDS/SDK clients run only in these. No pytest
here, so `bench/` uses the same code; the suite's fixtures live in conftest.py.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def base_env(**extra: str) -> dict[str, str]:
    """This process's environment without AWS_/ECS_/METAMOCK_ variables, the repo importable, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ECS_", "METAMOCK_"))}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


class NetNS:
    """A throwaway network namespace with only `lo`, shaped like an ECS task's view."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.procs: list[subprocess.Popen[bytes] | subprocess.Popen[str]] = []  # killed by close()

    def cmd(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("timeout", 60)
        return subprocess.run(self.cmd(argv), check=False, **kw)

    def popen(self, argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(self.cmd(argv), **kw)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        pids = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True, check=False)
        for pid in pids.stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), 9)
        subprocess.run(["ip", "netns", "del", self.name], check=False, capture_output=True)


def create_netns(prefix: str = "mmt", *, ecs_shaped: bool = True, imds_routes: bool = False) -> NetNS:
    """A new namespace with `lo` up; `ecs_shaped` puts 169.254.170.2 on lo (where a fake ECS agent
    listens), `imds_routes` routes the IMDS addresses to lo. Needs root."""
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    ns = NetNS(name)
    try:
        ns_ip = ["ip", "netns", "exec", name, "ip"]
        subprocess.run([*ns_ip, "link", "set", "lo", "up"], check=True)
        if ecs_shaped:
            subprocess.run([*ns_ip, "addr", "add", "169.254.170.2/32", "dev", "lo"], check=True)
        if imds_routes:
            subprocess.run(
                [*ns_ip, "route", "add", "169.254.169.254/32", "dev", "lo", "src", "127.0.0.1"], check=True
            )
            subprocess.run([*ns_ip, "-6", "route", "add", "fd00:ec2::254/128", "dev", "lo"], check=True)
    except BaseException:
        ns.close()
        raise
    return ns
