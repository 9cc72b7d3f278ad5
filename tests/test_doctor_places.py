"""`metamock doctor` judges what applies where it runs, through the CLI, in network namespaces:
inside a healthy Fargate-shaped sidecar (PID 1 is a real `metamock sidecar`, entered the way
`runc exec` / ECS Exec enter it), in an application container next to it, and on a laptop after
the README's quick start (`metamock serve`, local source, no AWS credentials)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, make_netns, require
from tests.doctor_support import assert_no_secrets
from tests.ecs_netns import start_fake_agent
from tests.fakes.ecs_agent import fargate_env
from tests.netns import NetNS
from tests.servers import wait_ready
from tests.test_doctor_netns import clean_env

pytestmark = pytest.mark.root

PY = sys.executable
PORT = 1442  # inside private namespaces; not 1338, which other suites use on the host
ENDPOINT = f"http://127.0.0.1:{PORT}/"
# Fargate's default capability set has neither; as root the bounding set is what takes them away.
FARGATE_CAPS = ["setpriv", "--inh-caps=-net_admin,-sys_ptrace", "--bounding-set=-net_admin,-sys_ptrace"]
IN_PIDNS = ["unshare", "--pid", "--fork", "--mount-proc"]
SIDECAR_OPTS = ["--port", str(PORT), "--stop-notice", "0", "--profile-script", "", "--systemd-dir", ""]
DOCTOR = [PY, "-m", "metamock", "doctor", "--port", str(PORT)]


def checks(res: subprocess.CompletedProcess[str]) -> dict[str, dict[str, str]]:
    assert_no_secrets(res.stdout, res.stderr)
    return {c["name"]: c for c in json.loads(res.stdout)["checks"]}


def children_of(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


@pytest.fixture(scope="module")
def fargate_task() -> Iterator[tuple[NetNS, int]]:
    """A task-shaped namespace: the fake ECS agent, and `metamock sidecar` as PID 1 of its own
    PID and mount namespace, without NET_ADMIN and SYS_PTRACE. Yields (namespace, host pid of
    the sidecar)."""
    require(Path("/usr/bin/unshare").exists() and Path("/usr/bin/nsenter").exists(), "needs util-linux")
    ns = make_netns()
    try:
        env = clean_env(**fargate_env())
        start_fake_agent(ns)
        sidecar = ns.popen(
            [*FARGATE_CAPS, *IN_PIDNS, PY, "-m", "metamock", "sidecar", "--source", "ecs", *SIDECAR_OPTS],
            cwd=REPO,
            env=env,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not (pids := children_of(sidecar.pid)):
            assert time.monotonic() < deadline, "unshare did not fork"
            time.sleep(0.02)
        wait_ready(PORT, sidecar, ns)
        yield ns, pids[0]
    finally:
        ns.close()


def in_sidecar(ns: NetNS, pid: int, *args: str) -> subprocess.CompletedProcess[str]:
    """doctor in the sidecar's PID and mount namespaces, with its environment and capabilities."""
    enter = ["nsenter", "--target", str(pid), "--pid", "--mount", "--"]
    return ns.run([*enter, *FARGATE_CAPS, *DOCTOR, *args], env=clean_env(**fargate_env()), cwd=REPO)


def test_doctor_in_a_healthy_fargate_sidecar_is_clean(fargate_task: tuple[NetNS, int]) -> None:
    ns, pid = fargate_task
    human = in_sidecar(ns, pid, "--offline")
    print(human.stdout)  # the sample sidecar run (pytest -s)
    assert human.returncode == 0, human.stdout + human.stderr
    assert "fail " not in human.stdout
    res = in_sidecar(ns, pid, "--offline", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    seen = checks(res)
    assert seen["pid1"]["detail"] == "PID 1 is `metamock sidecar`"
    assert seen["endpoint-env"]["status"] == "skip", seen["endpoint-env"]
    assert seen["endpoint-env"]["detail"].startswith(
        "this is metamock's own container (PID 1 is `metamock sidecar`)"
    )
    assert f"get AWS_EC2_METADATA_SERVICE_ENDPOINT={ENDPOINT} from it" in seen["endpoint-env"]["detail"]
    assert seen["capabilities"]["status"] == "pass", seen["capabilities"]
    assert "SYS_PTRACE: not needed, PID 1's environment is readable" in seen["capabilities"]["detail"]
    assert "Fargate never grants it" in seen["capabilities"]["detail"]
    assert seen["pid1-environ"]["status"] == "pass"
    for name in (
        "platform",
        "ecs-env",
        "tmde",
        "credentials-endpoint",
        "server",
        "role",
        "server-credentials",
    ):
        assert seen[name]["status"] == "pass", seen[name]
    assert seen["dev-log"]["status"] in ("pass", "skip")  # no agents here to log to syslog
    assert "warn" not in {c["status"] for c in seen.values()}, res.stdout


def test_doctor_in_an_app_container_of_the_same_task(fargate_task: tuple[NetNS, int]) -> None:
    """Same network, its own PID namespace: the variable is this container's job."""
    ns, _ = fargate_task
    res = ns.run([*FARGATE_CAPS, *IN_PIDNS, *DOCTOR, "--offline", "--json"], env=clean_env(**fargate_env()))
    assert res.returncode == 1
    seen = checks(res)
    assert seen["endpoint-env"]["status"] == "fail"
    fix = seen["endpoint-env"]["fix"]
    assert (
        f"set AWS_EC2_METADATA_SERVICE_ENDPOINT={ENDPOINT} in this container definition's environment" in fix
    )
    assert "Fargate grants no NET_ADMIN" in fix
    env = clean_env(**fargate_env(), AWS_EC2_METADATA_SERVICE_ENDPOINT=ENDPOINT)
    res = ns.run([*FARGATE_CAPS, *IN_PIDNS, *DOCTOR, "--offline", "--json"], env=env)
    assert res.returncode == 0, res.stdout
    assert checks(res)["endpoint-env"]["status"] == "pass"


def test_doctor_sharing_the_sidecars_pids_is_still_an_app_container(fargate_task: tuple[NetNS, int]) -> None:
    """PID 1 is the sidecar (a shared PID namespace) but the mount namespace is another one."""
    ns, pid = fargate_task
    argv = ["nsenter", "--target", str(pid), "--pid", "--", "unshare", "--mount", "--mount-proc"]
    res = ns.run([*argv, *FARGATE_CAPS, *DOCTOR, "--offline", "--json"], env=clean_env(**fargate_env()))
    seen = checks(res)
    assert seen["pid1"]["status"] == "pass"
    assert seen["endpoint-env"]["status"] == "fail", seen["endpoint-env"]


LAPTOP = """
{py} -m metamock serve --port {port} --stop-notice 0 2> {tmp}/serve.log &
i=0
until curl -s -o /dev/null -m 1 http://127.0.0.1:{port}/latest/meta-data/; do
  i=$((i+1)); [ $i -gt 200 ] && exit 9; sleep 0.1
done
AWS_EC2_METADATA_SERVICE_ENDPOINT={endpoint} {py} -m metamock doctor --json --port {port} > {tmp}/with.json
echo $? > {tmp}/with.rc
{py} -m metamock doctor --json --port {port} > {tmp}/without.json
echo $? > {tmp}/without.rc
"""


def test_doctor_on_a_laptop_after_the_quick_start(netns: NetNS, tmp_path: Path) -> None:
    """`metamock serve` with no AWS credentials serves its own fake key: STS is skipped, not failed.

    Its own PID namespace only so that metamock processes of other test runs on this machine
    are not taken for a sidecar; network: none but `lo`.
    """
    script = LAPTOP.format(py=PY, port=PORT, endpoint=ENDPOINT, tmp=tmp_path)
    done = netns.run([*IN_PIDNS, "sh", "-c", script], env=clean_env(), cwd=REPO, timeout=90)
    assert done.returncode == 0, done.stderr + (tmp_path / "serve.log").read_text()
    assert "FAKE" in (tmp_path / "serve.log").read_text()  # the quick start's warning: fake credentials
    with_var = json.loads((tmp_path / "with.json").read_text())["checks"]
    seen = {c["name"]: c for c in with_var}
    assert (tmp_path / "with.rc").read_text().strip() == "0", json.dumps(with_var, indent=1)
    assert seen["sts"]["status"] == "skip"
    assert "metamock's own fake credentials" in seen["sts"]["detail"]
    assert seen["platform"]["detail"].startswith("local")
    assert seen["capabilities"]["status"] == "pass"
    assert_no_secrets(json.dumps(with_var))
    without = {c["name"]: c for c in json.loads((tmp_path / "without.json").read_text())["checks"]}
    assert (tmp_path / "without.rc").read_text().strip() == "1"
    fix = without["endpoint-env"]["fix"]
    assert fix.startswith(f"`export AWS_EC2_METADATA_SERVICE_ENDPOINT={ENDPOINT}` in the shell")
    assert "container" not in fix
