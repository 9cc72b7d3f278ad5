"""`metamock sidecar` as a user runs it, in a network namespace with only `lo` (it redirects when
privileged): a missing agent is refused at start, SIGINT stops without the stop notice, the files
it wrote go when it exits, a non-root user is not warned about /etc, a busy port names --port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.netns import NetNS, base_env
from tests.servers import until, wait_ready

pytestmark = pytest.mark.root
PY = sys.executable
SIDECAR = [PY, "-m", "metamock", "sidecar", "--source", "local", "--port", "1338"]
RECORDER = """#!/bin/sh
notice() {
  curl -s -o /dev/null -w '%{http_code}' "${AWS_EC2_METADATA_SERVICE_ENDPOINT}latest/meta-data/spot/instance-action"
}
trap 'echo INT > "$DIR/got"; notice > "$DIR/notice"; exit 0' INT
trap 'echo TERM > "$DIR/got"; notice > "$DIR/notice"; exit 0' TERM
echo ready > "$DIR/ready"
while :; do sleep 0.05; done
"""


def listeners(ns: NetNS) -> list[str]:
    return [row for row in ns.run(["ss", "-Hltn"]).stdout.splitlines() if row.strip()]


def recorder(tmp_path: Path) -> Path:
    script = tmp_path / "recorder.sh"
    script.write_text(RECORDER)
    script.chmod(0o755)
    return script


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--agent", "cloudwatch"],
            "--agent cloudwatch: /opt/aws/amazon-cloudwatch-agent/bin/start-amazon-cloudwatch-agent "
            "does not exist (the CloudWatch agent is not installed in this image)",
        ),
        (
            ["--agent", "ssm"],
            "--agent ssm: /usr/bin/amazon-ssm-agent does not exist (the SSM agent is not installed in this image)",
        ),
        (
            ["--run", "web=no-such-program-here --port 80"],
            "--run web: no-such-program-here is not found on PATH (",
        ),
        (["--run", "x={tmp}/data.txt"], "--run x: {tmp}/data.txt is not executable"),
    ],
)
def test_a_missing_program_is_one_line_and_exit_2_before_serving(
    netns: NetNS, tmp_path: Path, args: list[str], expected: str
) -> None:
    if "/usr/bin/amazon-ssm-agent" in expected and Path("/usr/bin/amazon-ssm-agent").exists():
        pytest.fail("this machine has the SSM agent: the test needs a machine without it")
    (tmp_path / "data.txt").write_text("not a program\n")
    (tmp_path / "data.txt").chmod(0o644)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    expected = expected.replace("{tmp}", str(tmp_path))
    began = time.monotonic()
    result = netns.run([*SIDECAR, *args], env=base_env(), cwd=REPO, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"metamock sidecar: {expected}")
    assert time.monotonic() - began < 10  # at once, not after restarts
    assert listeners(netns) == []


def test_sigint_stops_the_programs_without_the_notice_and_removes_the_exports(
    netns: NetNS, tmp_path: Path
) -> None:
    profile = tmp_path / "made-by-metamock" / "metamock-ecs.sh"
    proc = netns.popen(
        [*SIDECAR, "--stop-notice", "30", "--run", f"rec={recorder(tmp_path)}", "--profile-script", str(profile),
         "--systemd-dir", ""],
        env=base_env(DIR=str(tmp_path), METAMOCK_NETFILTER="false"), cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        until((tmp_path / "ready").exists, "the program started", timeout=30)
        assert profile.exists()
        began = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
        took = time.monotonic() - began
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.stderr is not None
    log = proc.stderr.read().decode()
    assert took < 5, log  # no 30 s notice
    assert (tmp_path / "got").read_text() == "INT\n"  # the programs get the signal that was sent
    assert (tmp_path / "notice").read_text() == "404"  # still served, but no stop notice
    assert not profile.exists()
    assert not profile.parent.exists()  # it made the directory: it goes too
    assert "Traceback" not in log


def test_sigterm_serves_the_notice_while_programs_stop_and_leaves_a_changed_file(
    netns: NetNS, tmp_path: Path
) -> None:
    profile = tmp_path / "metamock-ecs.sh"
    proc = netns.popen(
        [*SIDECAR, "--stop-notice", "1", "--run", f"rec={recorder(tmp_path)}", "--profile-script", str(profile)],
        env=base_env(DIR=str(tmp_path), METAMOCK_NETFILTER="false"), cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        until((tmp_path / "ready").exists, "the program started", timeout=30)
        profile.write_text("# the image's own now\n")  # not what metamock wrote: not its to remove
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (tmp_path / "got").read_text() == "TERM\n"
    assert (tmp_path / "notice").read_text() == "200"
    assert profile.read_text() == "# the image's own now\n"


def _sidecar_as_nobody(netns: NetNS, *extra: str) -> str:
    """`metamock sidecar *extra` as nobody until healthy, then SIGTERM (exit 0); its stderr."""
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    env = base_env(HOME="/nonexistent")
    proc = netns.popen(
        [*nobody, *SIDECAR, *extra, "--run", "idle=sleep 600"], env=env, cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_ready(1338, proc, netns)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.stderr is not None
    return proc.stderr.read().decode()


def test_a_non_root_user_is_not_warned_about_etc(netns: NetNS) -> None:
    log = _sidecar_as_nobody(netns)
    assert "sidecar ready" in log
    assert "cannot write" not in log
    assert "/etc/" not in log


def test_an_explicit_unwritable_profile_script_still_warns(netns: NetNS) -> None:
    target = "/etc/profile.d/metamock-ecs.sh"
    assert f"cannot write {target}" in _sidecar_as_nobody(netns, "--profile-script", target)


def test_a_busy_port_names_the_port(netns: NetNS) -> None:
    holder = netns.popen(
        [PY, "-c", "import socket, time; s = socket.create_server(('127.0.0.1', 1338)); print(1, flush=True); "
         "time.sleep(600)"],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline() == b"1\n"
    result = netns.run(
        [*SIDECAR, "--run", "idle=sleep 600"], env=base_env(METAMOCK_NETFILTER="false"), cwd=REPO
    )
    assert result.returncode == 2, result.stderr
    assert (
        result.stderr.splitlines()[-1] == "metamock sidecar: --port 1338: address already in use on 127.0.0.1"
    )
    assert "--host" not in result.stderr
    assert "Traceback" not in result.stderr
    assert os.environ.get("METAMOCK_NETFILTER") is None
