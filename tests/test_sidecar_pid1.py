"""`metamock sidecar` as PID 1 for real: `unshare --pid --fork --mount-proc` inside a network
namespace with the fake ECS agent on 169.254.170.2:80 and fake agents (small shell scripts).
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import REPO, require
from tests.fakes.ecs_agent import fargate_env
from tests.netns import NetNS

pytestmark = pytest.mark.root
PY = sys.executable
PORT = 1338

AGENT = """#!/bin/sh
name=$1
env -0 > "$DIR/$name.env"
echo "$PPID" > "$DIR/$name.ppid"
E=$AWS_EC2_METADATA_SERVICE_ENDPOINT
tok=$(curl -sf -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' "${E}latest/api/token")
curl -sf -H "X-aws-ec2-metadata-token: $tok" "${E}latest/meta-data/instance-id" > "$DIR/$name.iid"
curl -sf --max-time 3 http://169.254.169.254/latest/meta-data/instance-id > "$DIR/$name.redirect"
# Orphans: each subshell exits at once, its sleep is reparented to PID 1 and must be reaped.
(sleep 0.3 &)
(sleep 0.4 &)
on_term() {
  echo "$name $(date +%s%N)" >> "$DIR/terms"
  curl -s "${E}latest/meta-data/spot/instance-action" > "$DIR/$name.notice"
  sleep 0.2
  exit 0
}
trap on_term TERM
trap 'echo "$name hup" >> "$DIR/signals"' HUP
trap 'echo "$name quit" >> "$DIR/signals"' QUIT
echo ready > "$DIR/$name.ready"
while :; do sleep 0.05; done
"""
CRASH = """#!/bin/sh
date +%s.%N >> "$DIR/crash.starts"
exit 3
"""


def until(predicate: Callable[[], bool], timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached; sidecar log:\n{log.read_text()[-4000:]}")
        time.sleep(0.05)


def children_of(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def states_of_children(pid: int) -> list[str]:
    states = []
    for child in children_of(pid):
        try:
            stat_line = Path(f"/proc/{child}/stat").read_text()
        except OSError:
            continue
        states.append(stat_line.rsplit(")", 1)[1].split()[0])
    return states


@pytest.fixture
def ecs_netns(netns: NetNS) -> NetNS:
    require(Path("/usr/bin/unshare").exists(), "needs unshare (util-linux)")
    agent = netns.popen(
        [PY, "-m", "tests.fakes.ecs_agent", "--host", "169.254.170.2", "--port", "80"],
        cwd=REPO,
        stdout=subprocess.PIPE,
    )
    assert agent.stdout is not None
    assert b"fake ecs agent" in agent.stdout.readline()
    return netns


def start_sidecar(ns: NetNS, tmp: Path, *args: str) -> tuple[subprocess.Popen[bytes], int, Path]:
    log = tmp / "sidecar.log"
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "DIR": str(tmp),
        **fargate_env(),
        "AWS_ACCESS_KEY_ID": "AKIASTATICEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "static-secret-example",
        "CW_CONFIG_CONTENT": '{"agent": {}}',
    }
    argv = ["unshare", "--pid", "--fork", "--mount-proc", PY, "-m", "metamock", "sidecar", "-v"]
    argv += ["--source", "ecs", "--port", str(PORT), "--stop-notice", "1"]
    argv += ["--profile-script", str(tmp / "profile.d" / "metamock-ecs.sh")]
    argv += ["--systemd-dir", str(tmp / "systemd"), *args]
    with log.open("wb") as out:
        proc = ns.popen(argv, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while not (pids := children_of(proc.pid)):
        assert time.monotonic() < deadline, "unshare did not fork"
        time.sleep(0.02)
    return proc, pids[0], log


def scripts(tmp: Path) -> tuple[Path, Path]:
    agent, crash = tmp / "agent.sh", tmp / "crash.sh"
    agent.write_text(AGENT)
    crash.write_text(CRASH)
    agent.chmod(0o755)
    crash.chmod(0o755)
    return agent, crash


def test_sidecar_as_pid1(ecs_netns: NetNS, tmp_path: Path) -> None:
    agent, crash = scripts(tmp_path)
    proc, pid1, log = start_sidecar(
        ecs_netns,
        tmp_path,
        "--run", f"first={agent} first",
        "--run", f"crash={crash}",
        "--run", f"second='{agent}' second",
        "--grace", "5",
    )  # fmt: skip
    try:
        until((tmp_path / "second.ready").exists, 20, "agents ready", log)
        until((tmp_path / "first.ready").exists, 5, "agents ready", log)

        # The agents see the re-exported variables and the endpoint, and nothing static.
        for name in ("first", "second"):
            env = dict(e.split("=", 1) for e in (tmp_path / f"{name}.env").read_text().split("\0") if e)
            for key, value in fargate_env().items():
                assert env[key] == value
            assert env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] == f"http://127.0.0.1:{PORT}/"
            assert "AWS_ACCESS_KEY_ID" not in env
            assert "AWS_SECRET_ACCESS_KEY" not in env
            assert env["CW_CONFIG_CONTENT"] == '{"agent": {}}'
            assert (tmp_path / f"{name}.ppid").read_text().strip() == "1"  # metamock is PID 1
            assert (tmp_path / f"{name}.iid").read_text().startswith("i-")
            # root in the namespace = CAP_NET_ADMIN: the redirect was applied.
            redirect = (tmp_path / f"{name}.redirect").read_text()
            assert redirect == (tmp_path / f"{name}.iid").read_text()

        # The profile.d export, 0600, sources to the same values.
        profile = tmp_path / "profile.d" / "metamock-ecs.sh"
        assert stat.S_IMODE(profile.stat().st_mode) == 0o600
        dumped = subprocess.run(
            ["env", "-i", "sh", "-c", '. "$1" && env', "sh", str(profile)],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout  # fmt: skip
        assert f"AWS_EC2_METADATA_SERVICE_ENDPOINT=http://127.0.0.1:{PORT}/" in dumped
        assert f"AWS_REGION={fargate_env()['AWS_REGION']}" in dumped

        # The crashing agent is restarted with growing delays (1 s, 2 s, ...).
        starts = tmp_path / "crash.starts"
        until(lambda: starts.exists() and len(starts.read_text().split()) >= 3, 10, "3 crash starts", log)
        times = [float(t) for t in starts.read_text().split()]
        first, second = times[1] - times[0], times[2] - times[1]
        assert 0.9 < first < 2.0
        assert 1.9 < second < 3.5
        assert second > first

        # The orphaned grandchildren were reaped: no zombie among PID 1's children.
        time.sleep(0.6)
        assert "Z" not in states_of_children(pid1)
        assert "reaped orphan" in log.read_text()

        # SIGHUP and SIGQUIT are forwarded to every agent.
        os.kill(pid1, signal.SIGHUP)
        os.kill(pid1, signal.SIGQUIT)
        signals = tmp_path / "signals"
        until(lambda: signals.exists() and len(signals.read_text().split("\n")) > 4, 5, "forwarding", log)
        assert sorted(signals.read_text().splitlines()) == [
            "first hup",
            "first quit",
            "second hup",
            "second quit",
        ]

        began = time.monotonic()
        os.kill(pid1, signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, log.read_text()[-4000:]
        took = time.monotonic() - began
    finally:
        if proc.poll() is None:
            proc.kill()
    terms = [line.split()[0] for line in (tmp_path / "terms").read_text().splitlines()]
    assert terms == ["second", "first"]  # every agent got SIGTERM, in reverse start order
    # Agents stop while the server serves the stop notice (in parallel, not after).
    for name in ("first", "second"):
        assert json.loads((tmp_path / f"{name}.notice").read_text())["action"] == "terminate"
    assert took < 5  # max(grace used, stop notice 1 s), not their sum
    text = log.read_text()
    assert "AKIASTATICEXAMPLE" not in text
    assert "static-secret-example" not in text


def test_exit_code_is_the_failed_childs(ecs_netns: NetNS, tmp_path: Path) -> None:
    agent, _ = scripts(tmp_path)
    fail = tmp_path / "fail.sh"
    fail.write_text('#!/bin/sh\nwhile [ ! -e "$DIR/steady.ready" ]; do sleep 0.05; done\nexit 7\n')
    fail.chmod(0o755)
    proc, _, log = start_sidecar(
        ecs_netns, tmp_path, "--restart", "never", "--run", f"steady={agent} steady", "--run", f"fail={fail}"
    )
    try:
        assert proc.wait(timeout=30) == 7, log.read_text()[-4000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (tmp_path / "terms").read_text().split()[0] == "steady"


def test_sigkill_after_grace_is_137(ecs_netns: NetNS, tmp_path: Path) -> None:
    stubborn = tmp_path / "stubborn.sh"
    stubborn.write_text("#!/bin/sh\ntrap '' TERM\necho up > \"$DIR/up\"\nwhile :; do sleep 0.05; done\n")
    stubborn.chmod(0o755)
    proc, pid1, log = start_sidecar(ecs_netns, tmp_path, "--grace", "0.5", "--run", f"stubborn={stubborn}")
    try:
        until((tmp_path / "up").exists, 20, "stubborn up", log)
        os.kill(pid1, signal.SIGTERM)
        assert proc.wait(timeout=20) == 137, log.read_text()[-4000:]
    finally:
        if proc.poll() is None:
            proc.kill()


def test_sigterm_during_start_up_exits_0(netns: NetNS, tmp_path: Path) -> None:
    # No fake ECS agent: the server keeps retrying the task metadata, as on a slow start.
    proc, pid1, log = start_sidecar(netns, tmp_path, "--run", "never=/bin/false")
    try:
        until(lambda: "starting the server" in log.read_text(), 20, "handlers installed", log)
        began = time.monotonic()
        os.kill(pid1, signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, log.read_text()[-4000:]
        assert time.monotonic() - began < 3
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "sidecar ready" not in log.read_text()
    assert "never: started" not in log.read_text()


def test_a_setsid_daemon_gets_sigterm_before_pid1_exits(ecs_netns: NetNS, tmp_path: Path) -> None:
    # As PID 1 the kernel SIGKILLs what is left when the sidecar exits; the daemon must be asked
    # first, as the programs are, so it can flush.
    prog = tmp_path / "prog.sh"
    prog.write_text(
        "#!/bin/sh\n"
        'setsid sh -c \'trap "echo term > $DIR/daemon.term; exit 0" TERM; touch $DIR/daemon.up; '
        "while :; do sleep 0.05; done' &\n"
        "exec sleep 600\n"
    )
    prog.chmod(0o755)
    proc, pid1, log = start_sidecar(ecs_netns, tmp_path, "--grace", "5", "--run", f"prog={prog}")
    try:
        until((tmp_path / "daemon.up").exists, 20, "daemon up", log)
        began = time.monotonic()
        os.kill(pid1, signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, log.read_text()[-4000:]
        took = time.monotonic() - began
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (tmp_path / "daemon.term").read_text() == "term\n"
    assert took < 4, log.read_text()[-4000:]  # the stop notice (1 s), not the grace
