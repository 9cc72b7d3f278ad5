"""`metamock doctor` end to end, as a subprocess inside network namespaces shaped like an ECS task:
the fake ECS agent on 169.254.170.2:80, `metamock serve --source ecs`, moto_server for STS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping

import pytest

from tests.conftest import REPO, make_netns
from tests.doctor_support import assert_no_secrets
from tests.ecs_netns import start_fake_agent
from tests.fakes.ecs_agent import fargate_env
from tests.moto_fixture import start_moto_server
from tests.netns import NetNS
from tests.servers import serve

pytestmark = pytest.mark.root

PY = sys.executable
PORT = 1441  # not 1338: other suites run servers there
MOTO_PORT = 5055
ENDPOINT = f"http://127.0.0.1:{PORT}/"
IN_PIDNS = ["unshare", "--pid", "--fork", "--mount-proc"]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without AWS/ECS/metamock/proxy variables or AWS files, plus `extra`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "ECS_", "METAMOCK_")) and "proxy" not in k.lower()
    }
    env.update(AWS_CONFIG_FILE="/nonexistent", AWS_SHARED_CREDENTIALS_FILE="/nonexistent", NO_COLOR="1")
    env.update(extra)
    return env


def doctor(
    ns: NetNS, env: Mapping[str, str], *args: str, wrap: list[str] = IN_PIDNS
) -> subprocess.CompletedProcess[str]:
    """Run doctor in `ns` (by default as PID 1 of a fresh PID namespace, like a container)."""
    res = ns.run([*wrap, PY, "-m", "metamock", "doctor", "--port", str(PORT), *args], env=dict(env), cwd=REPO)
    assert_no_secrets(res.stdout, res.stderr)
    return res


def statuses(res: subprocess.CompletedProcess[str]) -> dict[str, str]:
    return {c["name"]: c["status"] for c in json.loads(res.stdout)["checks"]}


def details(res: subprocess.CompletedProcess[str]) -> dict[str, str]:
    return {c["name"]: c["detail"] for c in json.loads(res.stdout)["checks"]}


def fixes(res: subprocess.CompletedProcess[str]) -> dict[str, str]:
    return {c["name"]: c["fix"] for c in json.loads(res.stdout)["checks"]}


@pytest.fixture(scope="module")
def task_ns() -> Iterator[NetNS]:
    """One task-shaped namespace for the module: fake ECS agent, metamock serve, moto_server."""
    ns = make_netns()
    try:
        start_fake_agent(ns)
        start_moto_server(ns, MOTO_PORT)
        server = serve(
            "--stop-notice", "0", source="ecs", host=None, port=PORT, ns=ns, env=clean_env(**fargate_env())
        )
        yield ns
        server.stop(timeout=10)  # a graceful stop removes the server's control socket
    finally:
        ns.close()


def healthy_env(**extra: str) -> dict[str, str]:
    env = {
        **fargate_env(),
        "AWS_EC2_METADATA_SERVICE_ENDPOINT": ENDPOINT,
        "AWS_ENDPOINT_URL_STS": f"http://127.0.0.1:{MOTO_PORT}",
    }
    return clean_env(**{**env, **extra})


def test_healthy_fargate_task(task_ns: NetNS) -> None:
    human = doctor(task_ns, healthy_env())
    print(human.stdout)  # the sample healthy run (pytest -s)
    assert human.returncode == 0, human.stdout + human.stderr
    res = doctor(task_ns, healthy_env(), "--json")
    assert res.returncode == 0
    seen = statuses(res)
    for name in (
        "platform", "ecs-env", "tmde", "clock-drift", "credentials-endpoint", "sts", "server", "imdsv2",
        "tokens", "role", "server-credentials", "endpoint-env", "capabilities", "pid1-environ", "pid1",
        "proxy",
    ):  # fmt: skip
        assert seen[name] == "pass", (name, res.stdout)
    assert "fail" not in seen.values()
    assert len(human.stdout.splitlines()) == len(seen) + 1
    assert "\033[" not in human.stdout  # not a TTY: no colour
    assert details(res)["sts"].startswith("credentials from the container endpoint are arn:aws:sts::")


def test_offline_skips_sts_only(task_ns: NetNS) -> None:
    res = doctor(task_ns, healthy_env(AWS_ENDPOINT_URL_STS="http://127.0.0.1:9"), "--json", "--offline")
    assert res.returncode == 0
    assert statuses(res)["sts"] == "skip"


def test_stale_credentials_id_and_unreachable_sts_fail(task_ns: NetNS) -> None:
    env = healthy_env(
        AWS_CONTAINER_CREDENTIALS_RELATIVE_URI="/v2/credentials/stale",
        AWS_ENDPOINT_URL_STS="http://127.0.0.1:9",
    )
    res = doctor(task_ns, env, "--json")
    assert res.returncode == 1
    assert statuses(res)["credentials-endpoint"] == "fail", res.stdout
    assert "HTTP 400 InvalidIdInRequest" in details(res)["credentials-endpoint"]
    assert statuses(res)["sts"] == "skip"
    res = doctor(task_ns, healthy_env(AWS_ENDPOINT_URL_STS="http://127.0.0.1:9"), "--json")
    assert statuses(res)["sts"] == "fail", res.stdout


def test_proxy_catching_imds_fails(task_ns: NetNS) -> None:
    res = doctor(task_ns, healthy_env(HTTP_PROXY="http://127.0.0.1:3128"), "--json", "--offline")
    assert res.returncode == 1
    assert statuses(res)["proxy"] == "fail"
    res = doctor(
        task_ns,
        healthy_env(HTTP_PROXY="http://127.0.0.1:3128", NO_PROXY="127.0.0.1,169.254.169.254,169.254.170.2"),
        "--json",
        "--offline",
    )
    assert statuses(res)["proxy"] == "pass"


def test_variables_dropped_by_a_supervisor(task_ns: NetNS) -> None:
    # PID 1 has the ECS variables; the program it starts gets an emptied environment.
    inner = f"env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin {PY} -m metamock doctor --json --offline --port {PORT}; true"
    res = task_ns.run([*IN_PIDNS, "sh", "-c", inner], env=healthy_env(), cwd=REPO)
    assert_no_secrets(res.stdout, res.stderr)
    assert res.returncode == 0  # `; true`
    seen = statuses(res)
    assert seen["platform"] == "fail"
    assert "PID 1 runs on Fargate" in details(res)["platform"]
    assert seen["endpoint-env"] == "fail"


def _nft(ns: NetNS, port: int) -> None:
    rules = (
        "table inet metamock\ndelete table inet metamock\ntable inet metamock {\n"
        " chain output {\n  type nat hook output priority -100; policy accept;\n"
        f"  ip daddr 169.254.169.254 tcp dport 80 redirect to :{port}\n }}\n}}\n"
    )
    res = ns.run(["nft", "-f", "-"], input=rules)
    assert res.returncode == 0, res.stderr


def test_redirect_rules_and_route(task_ns: NetNS) -> None:
    env = healthy_env()
    del env["AWS_EC2_METADATA_SERVICE_ENDPOINT"]
    try:
        applied = task_ns.run(
            [PY, "-m", "metamock", "netfilter", "apply", "--port", str(PORT)], cwd=REPO, env=env
        )
        assert applied.returncode == 0, applied.stderr
        res = doctor(task_ns, env, "--json", "--offline")
        assert [statuses(res)[n] for n in ("redirect", "route", "endpoint-env")] == ["pass"] * 3, res.stdout
        assert details(res)["redirect"] == f"nft rules send 169.254.169.254:80 to :{PORT}"
        task_ns.run([PY, "-m", "metamock", "netfilter", "remove"], cwd=REPO, env=env)
        task_ns.run(["ip", "route", "add", "169.254.169.254/32", "dev", "lo", "src", "127.0.0.1"])
        _nft(task_ns, 9999)  # by hand, pointing at the wrong port
        res = doctor(task_ns, env, "--json", "--offline")
        assert res.returncode == 1
        assert statuses(res)["redirect"] == "fail"
        assert statuses(res)["endpoint-env"] == "fail"
    finally:
        task_ns.run(["nft", "delete", "table", "inet", "metamock"])
        task_ns.run(["ip", "route", "del", "169.254.169.254/32"])


def test_route_on_lo_without_source_address_fails() -> None:
    ns = make_netns(ecs_shaped=False)  # no 169.254.170.2 on lo: the kernel has no source to pick
    try:
        ns.run(["ip", "route", "add", "169.254.169.254/32", "dev", "lo"])
        _nft(ns, PORT)
        res = doctor(ns, clean_env(), "--json", "--offline")
        assert statuses(res)["route"] == "fail", res.stdout
        assert "replies would never arrive" in details(res)["route"]
    finally:
        ns.close()


def test_redirect_with_iptables(task_ns: NetNS) -> None:
    ipt = ["iptables", "-w", "5", "-t", "nat"]
    try:
        task_ns.run(["ip", "route", "add", "169.254.169.254/32", "dev", "lo", "src", "127.0.0.1"])
        task_ns.run([*ipt, "-N", "METAMOCK"])
        task_ns.run([*ipt, "-A", "METAMOCK", "-d", "169.254.169.254/32", "-p", "tcp", "--dport", "80",
                     "-j", "REDIRECT", "--to-ports", str(PORT)])  # fmt: skip
        task_ns.run([*ipt, "-A", "OUTPUT", "-j", "METAMOCK"])
        res = doctor(task_ns, healthy_env(), "--json", "--offline")
        assert statuses(res)["redirect"] == "pass", res.stdout
        assert details(res)["redirect"].startswith("iptables rules")
    finally:
        task_ns.run([*ipt, "-D", "OUTPUT", "-j", "METAMOCK"])
        task_ns.run([*ipt, "-F", "METAMOCK"])
        task_ns.run([*ipt, "-X", "METAMOCK"])
        task_ns.run(["ip", "route", "del", "169.254.169.254/32"])


def test_without_net_admin_the_endpoint_variable_decides(task_ns: NetNS) -> None:
    no_net_admin = ["setpriv", "--bounding-set", "-net_admin", "--inh-caps", "-net_admin", *IN_PIDNS]
    res = doctor(task_ns, healthy_env(), "--json", "--offline", wrap=no_net_admin)
    seen = statuses(res)
    assert res.returncode == 0, res.stdout
    # Fargate never grants NET_ADMIN: nothing to warn about, the endpoint variable carries it.
    assert (seen["capabilities"], seen["redirect"], seen["endpoint-env"]) == ("pass", "skip", "pass")
    assert "Fargate never grants it" in details(res)["capabilities"]
    env = healthy_env()
    del env["AWS_EC2_METADATA_SERVICE_ENDPOINT"]
    res = doctor(task_ns, env, "--json", "--offline", wrap=no_net_admin)
    assert res.returncode == 1
    assert statuses(res)["endpoint-env"] == "fail"
    fix = fixes(res)["endpoint-env"]
    assert f"set AWS_EC2_METADATA_SERVICE_ENDPOINT={ENDPOINT} in this container definition" in fix
    assert "Fargate grants no NET_ADMIN" in fix


def test_broken_task(netns: NetNS) -> None:
    """No agent, no server: each check says what is missing."""
    res = doctor(netns, clean_env(**fargate_env()))
    print(res.stdout)  # the sample broken run (pytest -s)
    assert res.returncode == 1
    res = doctor(netns, clean_env(**fargate_env()), "--json")
    seen = statuses(res)
    assert (seen["tmde"], seen["credentials-endpoint"], seen["server"]) == ("fail", "fail", "fail")
    assert seen["sts"] == "skip"
    assert seen["endpoint-env"] == "fail"


def test_everything_hanging_finishes_in_time(netns: NetNS) -> None:
    """TMDE, the credentials endpoint, the server and STS all accept and never answer."""
    hang = netns.popen([PY, "-m", "tests.doctor_hang", "169.254.170.2:80", f"127.0.0.1:{PORT}", "127.0.0.1:5056"],
                       cwd=REPO, stdout=subprocess.PIPE)  # fmt: skip
    assert hang.stdout is not None
    assert hang.stdout.readline().strip() == b"ready"
    env = clean_env(**fargate_env(), AWS_ENDPOINT_URL_STS="http://127.0.0.1:5056")
    for args in ((), ("--json",)):
        started = time.monotonic()
        res = doctor(netns, env, *args)
        elapsed = time.monotonic() - started
        print(f"all-hanging doctor {' '.join(args)}: {elapsed:.2f} s")
        assert elapsed < 10
        assert res.returncode == 1
    seen = statuses(res)
    assert (seen["tmde"], seen["credentials-endpoint"], seen["server"]) == ("fail", "fail", "fail")
    assert "no answer within" in details(res)["server"]


def test_unprivileged_user_cannot_read_pid1(netns: NetNS) -> None:
    """A non-root app container: no capabilities, PID 1 (root) unreadable: SYS_PTRACE is needed."""
    inner = (
        "setpriv --reuid=65534 --regid=65534 --clear-groups "
        f"{PY} -m metamock doctor --json --offline --port {PORT}; true"
    )
    res = netns.run([*IN_PIDNS, "sh", "-c", inner], env=clean_env(**fargate_env()), cwd=REPO)
    assert_no_secrets(res.stdout, res.stderr)
    seen = statuses(res)
    assert (seen["capabilities"], seen["pid1-environ"], seen["redirect"]) == ("warn", "warn", "skip")
    assert details(res)["capabilities"].endswith("missing SYS_PTRACE")
    assert details(res)["pid1-environ"] == "/proc/1/environ: permission denied"
    assert "PID 1: unreadable" in details(res)["endpoint-env"]
    # The same user off ECS (a laptop): nothing to re-export, so nothing to warn about.
    res = netns.run([*IN_PIDNS, "sh", "-c", inner], env=clean_env(), cwd=REPO)
    seen = statuses(res)
    assert (seen["capabilities"], seen["pid1-environ"]) == ("pass", "skip"), res.stdout
