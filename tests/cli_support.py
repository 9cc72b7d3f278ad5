"""Running `python -m metamock ...` as a user would, and judging what it printed."""

from __future__ import annotations

import subprocess

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
