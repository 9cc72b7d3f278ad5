"""`--allow-remote` with optional tokens serves the role to anyone who can route to the listener
(an IMDSv1 GET needs no token; the hop limit guards only the token reply): `serve` and `sidecar`
say so in one WARNING at start, and say nothing when tokens are required. As a user runs them, in
a network namespace with only `lo`, listening on an address added to it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.netns import NetNS, base_env
from tests.servers import wait_ready

pytestmark = pytest.mark.root
PY = sys.executable
ADDRESS = "10.213.0.1"  # on lo inside the namespace only: stands for the task's VPC address
WARNING = (
    f"--allow-remote with --tokens optional: role credentials go to any client that can reach {ADDRESS} "
    "port 1338, however many hops away (IMDSv1 GETs need no token; the hop limit protects only "
    "tokens). Set --tokens required"
)
ROLE_URL = f"http://{ADDRESS}:1338/latest/meta-data/iam/security-credentials/"


def run(netns: NetNS, command: list[str], tokens: str) -> tuple[str, str]:
    """Start `command` on ADDRESS, GET the role listing without a token, SIGTERM; (status, stderr)."""
    assert netns.run(["ip", "addr", "add", f"{ADDRESS}/32", "dev", "lo"]).returncode == 0
    argv = [PY, "-m", "metamock", *command, "--source", "local", "--host", ADDRESS, "--port", "1338"]
    argv += ["--allow-remote", "--tokens", tokens, "--stop-notice", "0"]
    env = base_env(AWS_CONFIG_FILE="/nonexistent", AWS_SHARED_CREDENTIALS_FILE="/nonexistent")
    proc = netns.popen(argv, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_ready(1338, proc, netns, host=ADDRESS)
        status = netns.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", ROLE_URL]).stdout
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err.decode()
    return status, err.decode()


@pytest.mark.parametrize(
    "command",
    [["serve"], ["sidecar", "--run", "idle=sleep 600", "--profile-script", "", "--systemd-dir", ""]],
    ids=["serve", "sidecar"],
)
def test_optional_tokens_on_a_remote_address_warn_once(netns: NetNS, command: list[str]) -> None:
    status, err = run(netns, command, "optional")
    assert status == "200"  # what the warning is about: the role, without a token
    warnings = [line for line in err.splitlines() if "WARNING" in line]
    assert len([w for w in warnings if "--allow-remote" in w]) == 1, err
    assert any(w.endswith(WARNING) for w in warnings), err


def test_required_tokens_do_not_warn(netns: NetNS) -> None:
    status, err = run(netns, ["serve"], "required")
    assert status == "401"
    assert "--allow-remote" not in err
    # The one WARNING left is the local source's own (no AWS credentials on this machine).
    assert [line for line in err.splitlines() if "WARNING" in line and "no AWS credentials" not in line] == []
