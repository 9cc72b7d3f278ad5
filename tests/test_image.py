"""The sidecar image, built from sidecar/Dockerfile by sidecar/build-oci and run by runc.

No Docker engine: build-oci builds the image (debootstrap base, buildah bud, OCI layout), umoci
unpacks it to a runtime bundle, and runc runs its entrypoint as PID 1 in a network namespace made
like a Fargate task's: only `lo`, 169.254.170.2 on it with a fake ECS agent on port 80, the Fargate
variables in the container's environment. A fake agent, bind-mounted and started with `--run`,
records the environment it was given and how it was stopped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from metamock.translate import instance_id
from tests.conftest import FIXTURES, REPO, NetNS, make_netns, require, require_root
from tests.fakes.ecs_agent import fargate_env

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(1500)]

PORT = 1338
STOP_NOTICE = 1
GRACE = 8
IMAGE_UID = 1338
STATIC_KEY = "AKIASTATICKEYEXAMPLE"
# The fake agent: dumps its environment, then waits; on SIGTERM it says so and exits 0.
FAKE_AGENT = """#!/bin/sh
env -0 > /out/probe.env.tmp && mv /out/probe.env.tmp /out/probe.env
trap 'echo TERM > /out/probe.stopped; exit 0' TERM
while :; do sleep 1 & wait $!; done
"""


@dataclass
class Container:
    id: str
    ns: NetNS
    proc: subprocess.Popen[bytes]
    state_dir: Path
    out: Path
    log: Path

    def runc(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["runc", "--root", str(self.state_dir), *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def exec(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return self.runc("exec", self.id, *argv)

    def curl(self, *argv: str) -> str:
        done = self.ns.run(["curl", "-sS", "--fail", "--max-time", "5", *argv])
        assert done.returncode == 0, done.stderr
        return done.stdout


def _wait_for(what: str, predicate: Any, timeout: float, container: Container | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if container is not None and container.proc.poll() is not None:
            break
        time.sleep(0.2)
    logs = container.log.read_text(errors="replace")[-3000:] if container else ""
    pytest.fail(f"timed out waiting for {what}\n{logs}")


@pytest.fixture(scope="module")
def oci_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the image exactly as users would without Docker (base rootfs cached between runs)."""
    require_root()
    for tool in ("buildah", "umoci", "runc", "debootstrap", "curl"):
        require(shutil.which(tool) is not None, f"needs {tool}")
    layout = tmp_path_factory.mktemp("oci") / "layout"
    started = time.monotonic()
    script = str(REPO / "sidecar" / "build-oci")
    built = subprocess.run(
        [script, "--output", str(layout), "--tag", "test", "--python", sys.executable],
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    print(built.stdout, f"build-oci took {time.monotonic() - started:.0f}s", sep="\n")
    assert re.search(r"^build-oci: image size .+", built.stdout, re.MULTILINE)
    return layout


def _image_config(layout: Path) -> dict[str, Any]:
    def blob(digest: str) -> Any:
        return json.loads((layout / "blobs" / "sha256" / digest.split(":", 1)[1]).read_text())

    index = json.loads((layout / "index.json").read_text())
    manifest = blob(index["manifests"][0]["digest"])
    config: dict[str, Any] = blob(manifest["config"]["digest"])["config"]
    return config


def _bundle_config(bundle: Path, ns: NetNS, agents: Path, out: Path) -> None:
    """Point the bundle at the test's namespace, pass the Fargate environment, add the agent."""
    path = bundle / "config.json"
    config = json.loads(path.read_text())
    process = config["process"]
    process["terminal"] = False
    process["args"] += [
        "--port", str(PORT), "--stop-notice", str(STOP_NOTICE), "--grace", str(GRACE),
        "--run", "probe=/agents/probe.sh",
    ]  # fmt: skip
    # As ECS does: the task's variables, plus a static key that must not reach the agents.
    process["env"] += [f"{k}={v}" for k, v in fargate_env().items()]
    process["env"].append(f"AWS_ACCESS_KEY_ID={STATIC_KEY}")
    # As Docker does for a non-root user: no effective capabilities.
    for kind in ("effective", "permitted", "inheritable", "ambient"):
        process["capabilities"][kind] = []
    config["hostname"] = "metamock-test"
    config["linux"]["namespaces"] = [
        {"type": "network", "path": f"/var/run/netns/{ns.name}"} if n["type"] == "network" else n
        for n in config["linux"]["namespaces"]
    ]
    config["mounts"] += [
        {"destination": "/agents", "type": "bind", "source": str(agents), "options": ["rbind", "ro"]},
        {"destination": "/out", "type": "bind", "source": str(out), "options": ["rbind", "rw"]},
    ]
    path.write_text(json.dumps(config, indent=2))


@pytest.fixture(scope="module")
def container(oci_layout: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    work = tmp_path_factory.mktemp("runc")
    bundle, agents, out, state = work / "bundle", work / "agents", work / "out", work / "state"
    for d in (agents, out, state):
        d.mkdir()
    (agents / "probe.sh").write_text(FAKE_AGENT)
    (agents / "probe.sh").chmod(0o755)
    os.chown(out, IMAGE_UID, IMAGE_UID)
    unpacked = subprocess.run(
        ["umoci", "unpack", "--image", f"{oci_layout}:test", str(bundle)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert unpacked.returncode == 0, unpacked.stderr
    ns = make_netns()
    ident = f"metamock-{uuid.uuid4().hex[:8]}"
    log = work / "container.log"
    try:
        agent = ns.popen(
            [sys.executable, "-m", "tests.fakes.ecs_agent", "--host", "169.254.170.2", "--port", "80"],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
        )
        _bundle_config(bundle, ns, agents, out)
        with log.open("wb") as sink:
            proc = subprocess.Popen(
                ["runc", "--root", str(state), "run", "--bundle", str(bundle), ident],
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        running = Container(ident, ns, proc, state, out, log)
        assert agent.poll() is None
        yield running
    finally:
        subprocess.run(
            ["runc", "--root", str(state), "delete", "--force", ident],
            capture_output=True,
            timeout=30,
            check=False,
        )
        if "proc" in locals() and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        ns.close()
        shutil.rmtree(bundle, ignore_errors=True)


def test_image_config(oci_layout: Path) -> None:
    config = _image_config(oci_layout)
    assert config["Entrypoint"] == ["metamock", "sidecar"]
    assert config["User"] == f"{IMAGE_UID}:{IMAGE_UID}", "least privilege: not root by default"
    assert any(e.startswith("PATH=/opt/metamock/bin:") for e in config["Env"])
    # What the OCI config cannot carry (HEALTHCHECK) or does not record (the build's inputs).
    dockerfile = (REPO / "sidecar" / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE=python:3\.11-slim", dockerfile, re.MULTILINE)
    assert re.search(r'^HEALTHCHECK .*CMD \["metamock", "healthcheck"\]$', dockerfile, re.MULTILINE)
    assert "--no-index --find-links /wheels" in dockerfile
    assert "tini" not in dockerfile.lower().replace("no tini", "")


def test_pid1_is_metamock_and_healthy(container: Container) -> None:
    healthy = _wait_for(
        "metamock healthcheck to pass",
        lambda: container.exec("metamock", "healthcheck").returncode == 0,
        timeout=60,
        container=container,
    )
    assert healthy
    cmdline = container.exec("cat", "/proc/1/cmdline").stdout.split("\0")
    assert "sidecar" in cmdline
    assert any(Path(arg).name == "metamock" for arg in cmdline), cmdline
    status = container.exec("cat", "/proc/1/status").stdout
    assert re.search(rf"^Uid:\s+{IMAGE_UID}\s", status, re.MULTILINE), status


def test_client_in_the_task_namespace_gets_instance_id_and_credentials(container: Container) -> None:
    base = f"http://127.0.0.1:{PORT}/latest"
    token = container.curl("-X", "PUT", "-H", "X-aws-ec2-metadata-token-ttl-seconds: 60", f"{base}/api/token")
    auth = ["-H", f"X-aws-ec2-metadata-token: {token}"]
    task = json.loads((FIXTURES / "fargate-task.json").read_text())
    assert container.curl(*auth, f"{base}/meta-data/instance-id") == instance_id(task["TaskARN"])
    expected = json.loads((FIXTURES / "credentials.json").read_text())
    role = container.curl(*auth, f"{base}/meta-data/iam/security-credentials/")
    assert role == expected["RoleArn"].rsplit("/", 1)[1]
    creds = json.loads(container.curl(*auth, f"{base}/meta-data/iam/security-credentials/{role}"))
    assert creds["Code"] == "Success"
    assert creds["AccessKeyId"] == expected["AccessKeyId"]
    assert creds["SecretAccessKey"] == expected["SecretAccessKey"]


def test_agent_runs_with_the_reexported_environment(container: Container) -> None:
    dump = container.out / "probe.env"
    _wait_for("the fake agent to start", dump.exists, timeout=30, container=container)
    env = dict(item.split("=", 1) for item in dump.read_text().split("\0") if "=" in item)
    for name, value in fargate_env().items():
        assert env.get(name) == value, name
    assert env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] == f"http://127.0.0.1:{PORT}/"
    assert STATIC_KEY not in dump.read_text(), "a static key leaked into the agent"


def test_sigterm_stops_everything_with_exit_code_zero(container: Container) -> None:
    assert container.proc.poll() is None, container.log.read_text(errors="replace")[-3000:]
    started = time.monotonic()
    killed = container.runc("kill", container.id, "TERM")
    assert killed.returncode == 0, killed.stderr
    try:
        code = container.proc.wait(timeout=STOP_NOTICE + GRACE + 15)
    except subprocess.TimeoutExpired:
        pytest.fail("the container did not stop after SIGTERM")
    elapsed = time.monotonic() - started
    logs = container.log.read_text(errors="replace")[-3000:]
    assert code == 0, logs
    assert elapsed < GRACE, f"took {elapsed:.1f}s, more than the grace period"
    assert (container.out / "probe.stopped").read_text().strip() == "TERM", logs
