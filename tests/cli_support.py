"""Running `python -m metamock ...` as a user would, and judging what it printed."""

from __future__ import annotations

import subprocess
import time
from typing import Any

from tests.conftest import CLOSED_PORT_ENDPOINT
from tests.netns import base_env


def cli_env(**extra: str) -> dict[str, str]:
    """The suite's clean environment, with no way for a local source to look for a real IMDS."""
    return base_env(
        AWS_EC2_METADATA_DISABLED="true", AWS_EC2_METADATA_SERVICE_ENDPOINT=CLOSED_PORT_ENDPOINT, **extra
    )


def assert_one_line_exit_2(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Exit 2, no traceback, exactly one line on stderr holding each of `needles`."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def wait_for_line(proc: subprocess.Popen[Any], needle: str, timeout: float = 30.0) -> str:
    """Read a server's stderr (text mode) until a line holding `needle`; `serve` logs
    "serving IMDS" once it listens and its control socket is up."""
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = str(proc.stderr.readline())  # text mode: str already
        if needle in line:
            return line
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"no {needle!r} from the server (exit {proc.poll()})")


def stop(proc: subprocess.Popen[Any]) -> int:
    """SIGTERM, wait, close the pipe; the exit code."""
    proc.terminate()
    code = proc.wait(timeout=15)
    if proc.stderr is not None:
        proc.stderr.close()
    return code
