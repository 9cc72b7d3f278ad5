"""The sidecar image: built from sidecar/Dockerfile in a clean clone, run by runc in two shapes.

No Docker engine and no registry: `sidecar/build-oci --base local` builds the same Dockerfile
with buildah on a debootstrap stand-in for debian:bookworm-slim, into an OCI layout (once per
session; the build cache under /var/cache/metamock-build makes a rerun fast). The build runs in
a `git clone` of the committed tree, so nothing untracked in the checkout can reach the image.
umoci unpacks it to a runtime bundle; runc runs its entrypoint as PID 1 in network namespaces
made here, with only `lo`:

- Fargate shape: non-root (the image's user), no capabilities, 169.254.170.2 on lo with a fake
  ECS agent on port 80, the Fargate variables in the environment; a fake agent started with
  `--run` records what it was given and how it was stopped. `metamock doctor --offline` in it
  reports no failure; the local source (AssumeRole through an assume-role profile) and doctor's
  STS check work against a moto server: the pruned botocore still has what they use.
- ECS-on-EC2 shape (taskdef-examples/ec2-awsvpc-netfilter.json): root, NET_ADMIN, `--netfilter`;
  a second process in the namespace reaches the sidecar at 169.254.169.254:80.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from metamock.translate import instance_id
from tests.conftest import FIXTURES, REPO, make_netns, require, require_root
from tests.ecs_netns import start_fake_agent
from tests.fakes.ecs_agent import fargate_env
from tests.moto_fixture import start_moto_server
from tests.netns import NetNS

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(1800)]

PORT = 1338
STOP_NOTICE = 1
GRACE = 8
IMAGE_UID = 1338
STATIC_KEY = "AKIASTATICKEYEXAMPLE"
MAX_COMPRESSED_MB = 50
# Inside the namespaces made here (private, so fixed ports cannot collide with anything).
MOTO_PORT = 5000
LOCAL_PORT = 1339
ROLE_ARN = "arn:aws:iam::123456789012:role/image-test-role"
# The fake agent: dumps its environment, then waits; on SIGTERM it says so and exits 0. Python,
# because the image has a shell (dash) but no coreutils.
FAKE_AGENT = """#!/usr/bin/python3
import os, signal, sys, time
with open("/out/probe.env.tmp", "wb") as f:
    f.write(b"\\0".join(k.encode() + b"=" + v.encode() for k, v in os.environ.items()))
os.replace("/out/probe.env.tmp", "/out/probe.env")
def term(*_):
    with open("/out/probe.stopped", "w") as f:
        f.write("TERM\\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
while True:
    time.sleep(1)
"""
# What Docker (and so ECS on EC2) gives a container by default; the EC2 example adds NET_ADMIN.
DOCKER_DEFAULT_CAPS = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]  # fmt: skip


@dataclass
class Built:
    layout: Path
    bundle: Path  # unpacked once; each container runs a copy
    compressed_mb: float
    output: str


@dataclass
class Container:
    id: str
    ns: NetNS
    proc: subprocess.Popen[bytes]
    state_dir: Path
    out: Path
    log: Path

    def runc(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["runc", "--root", str(self.state_dir), *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def exec(self, *argv: str, env: dict[str, str] | None = None, timeout: float = 60) -> Any:
        flags = [f"--env={k}={v}" for k, v in (env or {}).items()]
        return self.runc("exec", *flags, self.id, *argv, timeout=timeout)

    def exec_popen(self, *argv: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        flags = [f"--env={k}={v}" for k, v in (env or {}).items()]
        return subprocess.Popen(
            ["runc", "--root", str(self.state_dir), "exec", *flags, self.id, *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def curl(self, *argv: str) -> str:
        done = self.ns.run(["curl", "-sS", "--fail", "--max-time", "5", *argv])
        assert done.returncode == 0, done.stderr + self.logs()
        return done.stdout

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def _wait_for(what: str, predicate: Any, timeout: float, container: Container | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if container is not None and container.proc.poll() is not None:
            break
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}\n{container.logs() if container else ''}")


def _run(argv: list[str], timeout: float, **kw: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, **kw)
    assert done.returncode == 0, f"{argv}: {done.stdout[-3000:]}{done.stderr[-3000:]}"
    return done


def _clean_clone(dest: Path) -> Path:
    """The committed tree of this checkout (HEAD), nothing untracked or ignored."""
    head = _run(["git", "-C", str(REPO), "rev-parse", "HEAD"], 30).stdout.strip()
    _run(["git", "clone", "--quiet", "--no-checkout", str(REPO), str(dest)], 120)
    _run(["git", "-C", str(dest), "checkout", "--quiet", "--detach", head], 120)
    dirty = _run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"], 30).stdout
    if dirty:
        print(f"note: the image is built from HEAD {head[:12]}; uncommitted changes are not in it")
    return dest


def _say(request: pytest.FixtureRequest, line: str) -> None:
    """Shown in the test run's output even when it passes (the size is a reported figure)."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)
    print(line)


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Built:
    require_root()
    for tool in ("buildah", "umoci", "runc", "debootstrap", "curl", "git"):
        require(shutil.which(tool) is not None, f"needs {tool}")
    work = tmp_path_factory.mktemp("image")
    clone = _clean_clone(work / "src")
    layout = work / "layout"
    started = time.monotonic()
    done = _run([str(clone / "sidecar" / "build-oci"), "--base", "local", "--output", str(layout), "--tag", "test"], 1500)  # fmt: skip
    took = time.monotonic() - started
    size = re.search(
        r"^build-oci: image size (.+) unpacked, ([\d.]+) MB .*compressed", done.stdout, re.MULTILINE
    )
    assert size, done.stdout
    _say(request, f"\nsidecar image: {size[2]} MB compressed, {size[1]} unpacked; build-oci took {took:.0f}s")
    print(done.stdout)
    bundle = work / "bundle"
    _run(["umoci", "unpack", "--image", f"{layout}:test", str(bundle)], 300)
    return Built(layout, bundle, float(size[2]), done.stdout)


def _image_config(layout: Path) -> dict[str, Any]:
    def blob(digest: str) -> Any:
        return json.loads((layout / "blobs" / "sha256" / digest.split(":", 1)[1]).read_text())

    index = json.loads((layout / "index.json").read_text())
    manifest = blob(index["manifests"][0]["digest"])
    config: dict[str, Any] = blob(manifest["config"]["digest"])["config"]
    return config


def _start(
    built: Built,
    ns: NetNS,
    work: Path,
    *,
    args: list[str],
    env: dict[str, str],
    root: bool,
    caps: list[str],
) -> Container:
    """runc run a copy of the bundle in `ns`, as ECS would start the task's sidecar."""
    bundle, agents, out, state = work / "bundle", work / "agents", work / "out", work / "state"
    _run(["cp", "-a", str(built.bundle), str(bundle)], 300)
    for d in (agents, out, state):
        d.mkdir()
    (agents / "probe.py").write_text(FAKE_AGENT)
    (agents / "probe.py").chmod(0o755)
    os.chown(out, IMAGE_UID, IMAGE_UID)
    path = bundle / "config.json"
    config = json.loads(path.read_text())
    process = config["process"]
    process["terminal"] = False
    process["args"] += args
    process["env"] += [f"{k}={v}" for k, v in env.items()]
    if root:  # `"user": "0"` in the task definition
        process["user"] = {"uid": 0, "gid": 0}
    for kind in ("effective", "permitted", "bounding", "inheritable", "ambient"):
        # Non-root: Docker leaves a non-root process no effective capabilities.
        process["capabilities"][kind] = caps if kind == "bounding" or (root and kind != "ambient") else []
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
    ident = f"metamock-{uuid.uuid4().hex[:8]}"
    log = work / "container.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            ["runc", "--root", str(state), "run", "--bundle", str(bundle), ident],
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    return Container(ident, ns, proc, state, out, log)


def _stop(container: Container) -> None:
    container.runc("delete", "--force", container.id, timeout=30)
    if container.proc.poll() is None:
        container.proc.kill()
        container.proc.wait(timeout=10)


@contextlib.contextmanager
def _task(built: Built, work: Path, *, ns: NetNS, env: dict[str, str], **start: Any) -> Iterator[Container]:
    """The sidecar container in `ns` (a fake ECS agent on 169.254.170.2), healthy, then stopped."""
    container = None
    try:
        start_fake_agent(ns)
        container = _start(built, ns, work, env=env, **start)
        _wait_for(
            "healthcheck", lambda: container.exec("metamock", "healthcheck").returncode == 0, 60, container
        )
        yield container
    finally:
        if container is not None:
            _stop(container)
        ns.close()


@pytest.fixture(scope="module")
def fargate(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    # As ECS does: the task's variables, plus a static key that must not reach the agents.
    env = {**fargate_env(), "AWS_ACCESS_KEY_ID": STATIC_KEY}
    args = ["--port", str(PORT), "--stop-notice", str(STOP_NOTICE), "--grace", str(GRACE), "--run", "probe=/agents/probe.py"]  # fmt: skip
    # lo, 169.254.170.2 on it
    with _task(built, tmp_path_factory.mktemp("fargate"), ns=make_netns(), env=env, args=args, root=False, caps=[]) as container:  # fmt: skip
        yield container


@pytest.fixture(scope="module")
def ec2(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    """taskdef-examples/ec2-awsvpc-netfilter.json: user 0, NET_ADMIN, --netfilter."""
    taskdef = json.loads((REPO / "taskdef-examples" / "ec2-awsvpc-netfilter.json").read_text())
    (sidecar,) = [c for c in taskdef["containerDefinitions"] if c["name"] == "metamock"]
    assert sidecar["user"] == "0"
    assert sidecar["linuxParameters"]["capabilities"]["add"] == ["NET_ADMIN"]
    env = {k: v for k, v in fargate_env().items() if k != "AWS_EXECUTION_ENV"}
    env["AWS_EXECUTION_ENV"] = "AWS_ECS_EC2"
    args = [*sidecar["command"], "--stop-notice", str(STOP_NOTICE), "--grace", str(GRACE)]
    caps = [*DOCKER_DEFAULT_CAPS, "CAP_NET_ADMIN"]
    # lo and 169.254.170.2 only: no route to 169.254.169.254 until metamock adds it
    with _task(built, tmp_path_factory.mktemp("ec2"), ns=make_netns(), env=env, args=args, root=True, caps=caps) as container:  # fmt: skip
        yield container


# ---- the build --------------------------------------------------------------------------------


def test_dockerfile_is_the_one_way_to_build() -> None:
    dockerfile = (REPO / "sidecar" / "Dockerfile").read_text()
    code = "\n".join(line for line in dockerfile.splitlines() if not line.lstrip().startswith("#"))
    # The base is pinned by the digest of a multi-arch index, and a build arg overrides it.
    assert re.search(r"^ARG BASE=\S+:bookworm-slim@sha256:[0-9a-f]{64}$", code, re.MULTILINE)
    assert re.search(r"^FROM \$\{BASE\} AS build$", code, re.MULTILINE)
    # Nothing pre-built and nothing tied to one architecture or one host's Python.
    for needle in ("--no-index", ".cache", "wheels", "x86_64", "amd64", "aarch64", "cp311"):
        assert needle not in code, needle
    assert re.search(r'^HEALTHCHECK .*CMD \["metamock", "healthcheck"\]$', code, re.MULTILINE)
    assert "tini" not in code.lower()
    ignored = (REPO / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", ".cache", "sidecar/.cache", "**/__pycache__", ".pytest_cache"):
        assert entry in ignored, entry
    wrapper = (REPO / "sidecar" / "build-oci").read_text()
    assert re.search(
        r"bah build .*--build-arg \"BASE=\$base\"|build_args=\(--build-arg \"BASE=\$base\"\)", wrapper
    )
    assert '-f "$dockerfile"' in wrapper


def test_image_size_and_config(built: Built) -> None:
    assert built.compressed_mb <= MAX_COMPRESSED_MB, built.output
    config = _image_config(built.layout)
    assert config["Entrypoint"] == ["metamock", "sidecar"]
    assert config["User"] == f"{IMAGE_UID}:{IMAGE_UID}", "least privilege: not root by default"
    assert any(e.startswith("PATH=/opt/metamock/bin:") for e in config["Env"])
    assert config.get("Healthcheck", {}).get("Test") in (None, ["CMD", "metamock", "healthcheck"])


def test_image_contents(built: Built) -> None:
    rootfs = built.bundle / "rootfs"
    for tool in ("nft", "iptables", "iptables-nft", "iptables-legacy", "ip6tables"):
        assert (rootfs / "usr/sbin" / tool).exists(), tool
    # What a slim final stage leaves out.
    for absent in ("usr/bin/dpkg", "usr/bin/apt-get", "usr/bin/perl", "usr/share/man", "usr/share/locale"):
        assert not (rootfs / absent).exists(), absent
    site = next((rootfs / "opt/metamock/lib").glob("python3*/site-packages"))
    assert not (site / "pip").exists()
    models = {p.name for p in (site / "botocore/data").iterdir() if p.is_dir()}
    assert models == {"sts", "ssm", "sso", "sso-oidc", "signin"}
    for name in ("endpoints.json", "partitions.json", "sdk-default-configuration.json", "_retry.json"):
        assert (site / "botocore/data" / name).is_file(), name
    home = rootfs / "var/lib/metamock"
    assert (home.stat().st_uid, home.stat().st_gid) == (IMAGE_UID, IMAGE_UID)
    assert (rootfs / "tmp").stat().st_mode & 0o7777 == 0o1777
    setuid = [
        str(p) for p in rootfs.rglob("*") if p.is_file() and not p.is_symlink() and p.stat().st_mode & 0o6000
    ]
    assert setuid == []


# ---- Fargate shape ----------------------------------------------------------------------------


def test_pid1_is_metamock_and_unprivileged(fargate: Container) -> None:
    read = "import sys; sys.stdout.write(open(sys.argv[1]).read())"
    cmdline = fargate.exec("python3", "-c", read, "/proc/1/cmdline").stdout.split("\0")
    assert "sidecar" in cmdline
    assert any(Path(arg).name == "metamock" for arg in cmdline), cmdline
    status = fargate.exec("python3", "-c", read, "/proc/1/status").stdout
    assert re.search(rf"^Uid:\s+{IMAGE_UID}\s", status, re.MULTILINE), status
    assert re.search(r"^CapEff:\s+0+$", status, re.MULTILINE), status
    shell = fargate.exec("sh", "-c", "echo shell-ok")
    assert shell.stdout == "shell-ok\n", shell.stderr


def test_doctor_offline_reports_no_failure(fargate: Container) -> None:
    done = fargate.exec("metamock", "doctor", "--offline")
    lines = done.stdout.splitlines()
    # A healthy sidecar: nothing fails, and nothing is warned about that does not apply here (the
    # endpoint variable is unset in the sidecar itself; PID 1's environment is its own). The one
    # warning that does apply: this sidecar runs a program and the image has no /dev/log.
    warned = {line.split()[1] for line in lines if line.startswith("warn")}
    assert warned <= {"dev-log"}, done.stdout + done.stderr
    assert [line for line in lines if line.startswith("fail")] == [], done.stdout + done.stderr
    assert any(line.split()[:2] == ["pass", "capabilities"] for line in lines), done.stdout
    assert any(line.split()[:2] == ["skip", "endpoint-env"] for line in lines), done.stdout
    assert done.returncode == 0, done.stdout + done.stderr


def test_client_in_the_task_namespace_gets_instance_id_and_credentials(fargate: Container) -> None:
    base = f"http://127.0.0.1:{PORT}/latest"
    token = fargate.curl("-X", "PUT", "-H", "X-aws-ec2-metadata-token-ttl-seconds: 60", f"{base}/api/token")
    auth = ["-H", f"X-aws-ec2-metadata-token: {token}"]
    task = json.loads((FIXTURES / "fargate-task.json").read_text())
    assert fargate.curl(*auth, f"{base}/meta-data/instance-id") == instance_id(task["TaskARN"])
    expected = json.loads((FIXTURES / "credentials.json").read_text())
    role = fargate.curl(*auth, f"{base}/meta-data/iam/security-credentials/")
    assert role == expected["RoleArn"].rsplit("/", 1)[1]
    creds = json.loads(fargate.curl(*auth, f"{base}/meta-data/iam/security-credentials/{role}"))
    assert creds["Code"] == "Success"
    assert creds["AccessKeyId"] == expected["AccessKeyId"]
    assert creds["SecretAccessKey"] == expected["SecretAccessKey"]


def test_agent_runs_with_the_reexported_environment(fargate: Container) -> None:
    dump = fargate.out / "probe.env"
    _wait_for("the fake agent to start", dump.exists, timeout=30, container=fargate)
    env = dict(item.split("=", 1) for item in dump.read_text().split("\0") if "=" in item)
    for name, value in fargate_env().items():
        assert env.get(name) == value, name
    assert env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] == f"http://127.0.0.1:{PORT}/"
    assert STATIC_KEY not in dump.read_text(), "a static key leaked into the agent"


def test_local_source_and_sts_check_work_with_the_pruned_sdk(fargate: Container) -> None:
    """`serve --source local --profile P --role-arn R` (botocore's credential chain, then
    AssumeRole through aiobotocore) and doctor's STS check (botocore), in the image, against moto
    in the task's namespace."""
    moto, _ = start_moto_server(fargate.ns, MOTO_PORT, timeout=60)
    assert moto.poll() is None
    aws = fargate.out / "aws"
    aws.mkdir()
    (aws / "config").write_text("[profile base]\nregion = eu-west-1\n")
    (aws / "credentials").write_text(
        "[base]\naws_access_key_id = AKIAIMAGETESTBASE000\naws_secret_access_key = image/test/secret\n"
    )
    for f in (aws, aws / "config", aws / "credentials"):
        os.chown(f, IMAGE_UID, IMAGE_UID)
    env = {
        "AWS_CONFIG_FILE": "/out/aws/config",
        "AWS_SHARED_CREDENTIALS_FILE": "/out/aws/credentials",
        "AWS_ENDPOINT_URL_STS": f"http://127.0.0.1:{MOTO_PORT}",
    }
    server = fargate.exec_popen(
        "metamock", "serve", "--source", "local", "--profile", "base", "--role-arn", ROLE_ARN, "--port", str(LOCAL_PORT), "--stop-notice", "0",
        env=env,
    )  # fmt: skip
    try:
        _wait_for(
            "serve --source local",
            lambda: (
                fargate.exec("metamock", "healthcheck", "--port", str(LOCAL_PORT)).returncode == 0
                or server.poll() is not None
            ),
            60,
        )
        assert server.poll() is None, server.stderr.read().decode() if server.stderr else ""
        base = f"http://127.0.0.1:{LOCAL_PORT}/latest/meta-data/iam/security-credentials/"
        role = fargate.curl(base)
        assert role == ROLE_ARN.rsplit("/", 1)[1]
        creds = json.loads(fargate.curl(base + role))
        assert creds["Code"] == "Success"
        assert creds["AccessKeyId"].startswith("ASIA"), "not from AssumeRole"
        doctor = fargate.exec("metamock", "doctor", "--json", "--port", str(LOCAL_PORT), env=env)
        checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
        assert checks["sts"]["status"] == "pass", checks["sts"]
    finally:
        server.terminate()
        server.wait(timeout=20)
        if server.stderr is not None:
            server.stderr.close()
        moto.kill()


def test_sigterm_stops_everything_with_exit_code_zero(fargate: Container) -> None:
    assert fargate.proc.poll() is None, fargate.logs()
    started = time.monotonic()
    killed = fargate.runc("kill", fargate.id, "TERM")
    assert killed.returncode == 0, killed.stderr
    try:
        code = fargate.proc.wait(timeout=STOP_NOTICE + GRACE + 15)
    except subprocess.TimeoutExpired:
        pytest.fail("the container did not stop after SIGTERM")
    elapsed = time.monotonic() - started
    assert code == 0, fargate.logs()
    assert elapsed < GRACE, f"took {elapsed:.1f}s, more than the grace period"
    assert (fargate.out / "probe.stopped").read_text().strip() == "TERM", fargate.logs()


# ---- ECS-on-EC2 shape -------------------------------------------------------------------------


def test_ec2_netfilter_redirects_imds_address_to_the_sidecar(ec2: Container) -> None:
    task = json.loads((FIXTURES / "fargate-task.json").read_text())
    # A second process in the container's network namespace (the app container of the task).
    got = _wait_for(
        "169.254.169.254:80 to reach the sidecar",
        lambda: ec2.ns.run(["curl", "-sf", "--max-time", "3", "http://169.254.169.254/latest/meta-data/instance-id"]).stdout,
        30,
        ec2,
    )  # fmt: skip
    assert got == instance_id(task["TaskARN"])
    status = ec2.exec("metamock", "netfilter", "status", "--port", str(PORT))
    assert status.returncode == 0, status.stdout + status.stderr
    # Both iptables variants Debian ships run in the image (the nft one can read the rules).
    assert "nf_tables" in ec2.exec("iptables", "--version").stdout
    legacy = ec2.exec("iptables-legacy", "--version")
    assert legacy.returncode == 0 and "legacy" in legacy.stdout, legacy.stderr
    listed = ec2.exec("iptables-nft", "-t", "nat", "-S")
    assert listed.returncode == 0, listed.stderr


def test_ec2_sigterm_removes_the_redirect(ec2: Container) -> None:
    killed = ec2.runc("kill", ec2.id, "TERM")
    assert killed.returncode == 0, killed.stderr
    code = ec2.proc.wait(timeout=STOP_NOTICE + GRACE + 15)
    assert code == 0, ec2.logs()
    tables = ec2.ns.run(["nft", "list", "tables"])
    assert "metamock" not in tables.stdout, tables.stdout
