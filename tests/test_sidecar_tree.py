"""`metamock sidecar` not as PID 1 (a child subreaper, as with ECS `pidMode: task`) stops the whole
tree its programs started: a daemon that left the program's process group with `setsid` gets
SIGTERM after the programs and, when it ignores it, SIGKILL at the end of `--grace`. Run as a user
runs it, as a plain child of the test, in a network namespace with only `lo`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.netns import NetNS, base_env
from tests.servers import until, wait_ready

pytestmark = pytest.mark.root
PY = sys.executable
SIDECAR = [PY, "-m", "metamock", "sidecar", "--source", "local", "--port", "1338", "--stop-notice", "0"]
SIDECAR += ["--profile-script", "", "--systemd-dir", ""]


def marked(marker: str) -> dict[int, list[str]]:
    """pid -> argv of every process whose argv holds `marker`."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if any(marker in arg for arg in argv):
            found[int(entry.name)] = argv
    return found


def session_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[3])


def start(netns: NetNS, tmp_path: Path, run: str, *extra: str) -> subprocess.Popen[bytes]:
    log = (tmp_path / "sidecar.log").open("wb")
    proc = netns.popen(
        [*SIDECAR, *extra, "--run", run], env=base_env(METAMOCK_NETFILTER="false"), cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=log,
    )  # fmt: skip
    log.close()
    wait_ready(1338, proc, netns)
    return proc


def stop_and_time(proc: subprocess.Popen[bytes], marker: str, limit: float) -> tuple[int, float, float]:
    """SIGTERM; (exit code, seconds until the marked tree was gone, seconds until the exit)."""
    began = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    gone_at = None
    while time.monotonic() - began < limit:
        if gone_at is None and not marked(marker):
            gone_at = time.monotonic() - began
        if gone_at is not None and proc.poll() is not None:
            break
        time.sleep(0.01)
    code = proc.wait(timeout=30)
    assert gone_at is not None, f"still there {limit}s after SIGTERM: {marked(marker)}"
    return code, gone_at, time.monotonic() - began


def test_a_setsid_grandchild_is_stopped_with_the_program(netns: NetNS, tmp_path: Path) -> None:
    n = uuid.uuid4().int % 10**6
    marker = f"4242.{n:06d}"  # a unique sleep duration: how the test tells this tree's processes
    grace = 5.0
    proc = start(
        netns, tmp_path, f'x=sh -c "setsid sleep {marker}1 & sleep {marker}2"', "--grace", str(grace)
    )
    try:
        until(lambda: len([a for a in marked(marker).values() if a[0] == "sleep"]) == 2, "both sleeps run")
        sleeps = {argv[1]: pid for pid, argv in marked(marker).items() if argv[0] == "sleep"}
        detached = sleeps[f"{marker}1"]
        assert session_of(detached) == detached != session_of(proc.pid)  # it left the program's group
        code, gone, took = stop_and_time(proc, marker, grace + 1)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (tmp_path / "sidecar.log").read_text()
    assert code == 0, log  # every program stopped on the SIGTERM: the contract's clean stop
    assert gone < 1.0, log  # SIGTERM reaches the daemon at once: no wait for the grace
    assert took < grace + 1, log
    assert "process(es) the programs left behind" in log
    assert "killing" not in log
    print(f"SIGTERM -> tree gone {gone:.3f}s, sidecar exited {took:.3f}s")


def test_a_grandchild_ignoring_sigterm_is_killed_at_the_end_of_the_grace(
    netns: NetNS, tmp_path: Path
) -> None:
    n = uuid.uuid4().int % 10**6
    marker = f"4343.{n:06d}"
    ready = tmp_path / "stubborn-ready"
    script = tmp_path / "prog.sh"
    script.write_text(
        "#!/bin/sh\n"
        f"setsid sh -c 'trap \"\" TERM; touch {ready}; while :; do sleep 0.1; done' stubborn-{marker} &\n"
        f"exec sleep {marker}\n"
    )
    script.chmod(0o755)
    grace = 2.0
    proc = start(netns, tmp_path, f"x={script}", "--grace", str(grace))
    try:
        until(ready.exists, "the stubborn grandchild runs")
        # The program (exec'd into sleep) and the stubborn shell; a forking shell may show a third
        # for a moment.
        until(lambda: len(marked(marker)) == 2, "the tree settled")
        code, gone, took = stop_and_time(proc, marker, grace + 1)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (tmp_path / "sidecar.log").read_text()
    assert code == 0, log  # the program itself stopped on the SIGTERM; its leftover is logged
    assert grace - 0.2 < gone < grace + 1, log  # alive through the grace, SIGKILLed at its end
    assert took < grace + 1, log
    assert "process(es) the programs started still running after 2s; killing them" in log
    print(f"SIGTERM -> stubborn tree gone {gone:.3f}s, sidecar exited {took:.3f}s")
