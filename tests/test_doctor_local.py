"""Checks that read only the environment and /proc: each one's pass and fail path, on fake trees."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from metamock.doctor import environment, place, process, proxy, redirect
from metamock.doctor.report import Check, Status
from tests.doctor_support import NO_CAPS, assert_no_secrets, context, fake_proc
from tests.fakes.ecs_agent import AUTH_TOKEN, fargate_env

FARGATE = fargate_env()


# ---- platform / ecs-env ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "seen"),
    [
        ({"AWS_EXECUTION_ENV": "AWS_ECS_FARGATE"}, "Fargate"),
        ({"AWS_EXECUTION_ENV": "AWS_ECS_EC2"}, "ECS on EC2"),
        ({"AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://169.254.170.23/v1/credentials"}, "EKS"),
        ({"ECS_CONTAINER_METADATA_URI_V4": "http://169.254.170.2/v4/x"}, "ECS (AWS_EXECUTION_ENV unset)"),
        ({}, "local"),
    ],
)
def test_platform_names_where_we_run(environ: dict[str, str], seen: str, tmp_path: Path) -> None:
    check = environment.check_platform(context(environ, tmp_path))
    assert check.status is Status.PASS
    assert check.detail.startswith(seen)


def test_platform_fails_when_pid1_has_ecs_variables_and_we_do_not(tmp_path: Path) -> None:
    ctx = context({}, tmp_path, proc_root=fake_proc(tmp_path, pid1_env=FARGATE))
    check = environment.check_platform(ctx)
    assert check.status is Status.FAIL
    assert "PID 1 runs on Fargate" in check.detail
    assert "metamock env exec" in check.fix


def test_ecs_env_pass_and_failures(tmp_path: Path) -> None:
    assert environment.check_ecs_env(context(FARGATE, tmp_path)).status is Status.PASS
    assert environment.check_ecs_env(context({}, tmp_path)).status is Status.SKIP
    no_tmde = {k: v for k, v in FARGATE.items() if k != "ECS_CONTAINER_METADATA_URI_V4"}
    check = environment.check_ecs_env(context(no_tmde, tmp_path))
    assert check.status is Status.FAIL
    assert "ECS_CONTAINER_METADATA_URI_V4 is missing" in check.detail
    no_role = {k: v for k, v in FARGATE.items() if k != "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"}
    check = environment.check_ecs_env(context(no_role, tmp_path))
    assert check.status is Status.WARN
    assert "taskRoleArn" in check.fix
    no_region = {k: v for k, v in FARGATE.items() if "REGION" not in k}
    assert environment.check_ecs_env(context(no_region, tmp_path)).status is Status.WARN


# ---- capabilities / PID 1 / dev-log / agents ------------------------------------------------


SIDECAR_ARGV = ("/usr/bin/python3", "-m", "metamock", "sidecar", "--port", "1338")
EC2 = {"AWS_EXECUTION_ENV": "AWS_ECS_EC2", "ECS_CONTAINER_METADATA_URI_V4": "http://169.254.170.2/v4/x"}


def _pid1_unreadable(proc: Path) -> Path:
    (proc / "1" / "environ").unlink()  # as root a mode cannot hide it; a missing file can
    return proc


def test_capabilities_pass_with_both(tmp_path: Path) -> None:
    assert process.check_capabilities(context({}, tmp_path)).status is Status.PASS


def test_capabilities_warn_only_for_what_this_place_needs(tmp_path: Path) -> None:
    # A laptop: neither is needed (no redirect to set up here, nothing to re-export).
    ctx = context({}, tmp_path, proc_root=_pid1_unreadable(fake_proc(tmp_path, cap_eff=NO_CAPS)))
    check = process.check_capabilities(ctx)
    assert check.status is Status.PASS, check
    assert "not needed off ECS" in check.detail
    # The sidecar on ECS on EC2 with PID 1's environment unreadable: both are needed.
    proc = _pid1_unreadable(fake_proc(tmp_path, cap_eff=NO_CAPS, pid1_argv=SIDECAR_ARGV))
    check = process.check_capabilities(context(EC2, tmp_path, proc_root=proc))
    assert check.status is Status.WARN
    assert check.detail.endswith("missing NET_ADMIN, SYS_PTRACE")
    assert "linuxParameters.capabilities.add" in check.fix
    assert "AWS_EC2_METADATA_SERVICE_ENDPOINT=http://127.0.0.1:1338/" in check.fix
    # An application container on Fargate: NET_ADMIN is never granted there; SYS_PTRACE is
    # needed only because PID 1 cannot be read.
    proc = _pid1_unreadable(fake_proc(tmp_path, cap_eff=NO_CAPS))
    check = process.check_capabilities(context(FARGATE, tmp_path, proc_root=proc))
    assert check.status is Status.WARN
    assert check.detail.endswith("missing SYS_PTRACE")
    assert "Fargate never grants it" in check.detail


def test_capabilities_in_a_healthy_fargate_sidecar_pass(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, cap_eff=NO_CAPS, pid1_argv=SIDECAR_ARGV, pid1_env=FARGATE)
    check = process.check_capabilities(context(FARGATE, tmp_path, proc_root=proc))
    assert check.status is Status.PASS, check
    assert "PID 1's environment is readable" in check.detail


def test_capabilities_bits(tmp_path: Path) -> None:
    only_ptrace = f"{1 << 19:016x}"
    ctx = context({}, tmp_path, proc_root=fake_proc(tmp_path, cap_eff=only_ptrace))
    check = process.check_capabilities(ctx)
    assert check.detail.startswith(f"CapEff {only_ptrace}: SYS_PTRACE;")
    only_net_admin = f"{1 << 12:016x}"
    ctx = context({}, tmp_path, proc_root=fake_proc(tmp_path, cap_eff=only_net_admin))
    assert process.check_capabilities(ctx).detail.startswith(f"CapEff {only_net_admin}: NET_ADMIN;")


def test_pid1_environ_readable_and_missing(tmp_path: Path) -> None:
    ctx = context({}, tmp_path, proc_root=fake_proc(tmp_path, pid1_env=FARGATE))
    check = process.check_pid1_environ(ctx)
    assert check.status is Status.PASS
    assert "(5 ECS)" in check.detail
    check = process.check_pid1_environ(context({}, tmp_path, proc_root=tmp_path / "nothing"))
    assert check.status is Status.WARN


def test_pid1_pause_process_warns(tmp_path: Path) -> None:
    assert process.check_pid1(context({}, tmp_path)).detail == "PID 1 is init"
    ctx = context({}, tmp_path, proc_root=fake_proc(tmp_path, pid1_argv=["/pause"]))
    check = process.check_pid1(ctx)
    assert check.status is Status.WARN
    assert "--pid auto" in check.fix


def test_dev_log_socket_file_and_missing(tmp_path: Path) -> None:
    assert process.check_dev_log(context({}, tmp_path)).status is Status.WARN
    plain = tmp_path / "plain"
    plain.write_text("")
    assert process.check_dev_log(context({}, tmp_path, dev_log=plain)).status is Status.WARN
    sock_path = tmp_path / "log"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sock_path))
        assert process.check_dev_log(context({}, tmp_path, dev_log=sock_path)).status is Status.PASS


def test_agents_follow_the_sidecar_command_line(tmp_path: Path) -> None:
    assert process.check_agents(context({}, tmp_path)).status is Status.SKIP
    sidecar = [
        "/usr/bin/python3",
        "/usr/local/bin/metamock",
        "sidecar",
        "--agent",
        "ssm",
        "--agent=cloudwatch",
    ]
    running = fake_proc(
        tmp_path / "a",
        pid1_argv=sidecar,
        others=[
            ["/usr/bin/amazon-ssm-agent"],
            ["/opt/aws/amazon-cloudwatch-agent/bin/amazon-cloudwatch-agent"],
        ],
    )
    check = process.check_agents(context({}, tmp_path, proc_root=running))
    assert check.status is Status.PASS
    assert "cloudwatch, ssm: all running" in check.detail
    wrapper = fake_proc(
        tmp_path / "c",
        pid1_argv=[*sidecar[:4], "cloudwatch"],
        others=[["/bin/sh", "/opt/aws/amazon-cloudwatch-agent/bin/start-amazon-cloudwatch-agent"]],
    )
    assert process.check_agents(context({}, tmp_path, proc_root=wrapper)).status is Status.PASS
    half = fake_proc(tmp_path / "b", pid1_argv=sidecar, others=[["/usr/bin/amazon-ssm-agent"]])
    check = process.check_agents(context({}, tmp_path, proc_root=half))
    assert check.status is Status.WARN
    assert check.detail.endswith("not running now: cloudwatch")


# ---- proxy -----------------------------------------------------------------------------------


def test_proxy_pass_without_proxy_and_with_full_no_proxy(tmp_path: Path) -> None:
    assert proxy.check_proxy(context({}, tmp_path)).status is Status.PASS
    env = {"HTTP_PROXY": "http://proxy:3128", "NO_PROXY": "127.0.0.1,169.254.169.254,169.254.170.2"}
    assert proxy.check_proxy(context(env, tmp_path)).status is Status.PASS


def test_proxy_fails_when_http_proxy_catches_imds(tmp_path: Path) -> None:
    env = {"http_proxy": "http://user:hunter2secret@proxy:3128", "NO_PROXY": "localhost,169.254.0.0/16"}
    check = proxy.check_proxy(context(env, tmp_path))
    assert check.status is Status.FAIL
    assert "127.0.0.1, 169.254.169.254, 169.254.170.2" in check.detail
    assert "hunter2secret" not in check.detail + check.fix
    assert "proxy:3128" in check.detail


def test_proxy_https_only_warns(tmp_path: Path) -> None:
    check = proxy.check_proxy(context({"HTTPS_PROXY": "proxy:3128"}, tmp_path))
    assert check.status is Status.WARN


# ---- redirect without NET_ADMIN, endpoint variable, rule parsing ------------------------------


async def test_without_net_admin_only_the_endpoint_variable_counts(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, cap_eff=NO_CAPS)
    out: list[Check] = []
    ctx = context({"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:1338/"}, tmp_path, proc_root=proc)
    await redirect.checks(ctx, out)
    assert [(c.name, c.status) for c in out] == [
        ("redirect", Status.SKIP),
        ("route", Status.SKIP),
        ("endpoint-env", Status.PASS),
    ]
    out = []
    await redirect.checks(context({}, tmp_path, proc_root=proc), out)
    assert out[2].status is Status.FAIL
    assert "AWS_EC2_METADATA_SERVICE_ENDPOINT=http://127.0.0.1:1338/" in out[2].fix


def test_endpoint_variable_on_the_wrong_port_fails(tmp_path: Path) -> None:
    env = {"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9/"}
    check = redirect.check_endpoint_env(context(env, tmp_path, port=1338), redirect_ok=True)
    assert check.status is Status.FAIL
    pid1 = fake_proc(tmp_path, pid1_env={"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://localhost:1338"})
    env = {"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://localhost:1338"}
    check = redirect.check_endpoint_env(context(env, tmp_path, proc_root=pid1), redirect_ok=False)
    assert check.status is Status.PASS
    assert "PID 1: http://localhost:1338" in check.detail


def test_rule_ports_from_nft_and_iptables_listings() -> None:
    nft = "table inet metamock {\n chain output {\n  ip daddr 169.254.169.254 tcp dport 80 redirect to :1338\n }\n}"
    assert redirect.ports_in(nft) == {1338}
    ipt = "-A METAMOCK -d 169.254.169.254/32 -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 9000"
    assert redirect.ports_in(ipt) == {9000}
    assert redirect.ports_in("-A METAMOCK -j DNAT --to-destination 127.0.0.1:1400") == {1400}


def test_rules_judged_against_the_port(tmp_path: Path) -> None:
    ctx = context({}, tmp_path, port=1338)
    assert redirect.check_rules(ctx, redirect.Rules("nft", frozenset({1338}))).status is Status.PASS
    check = redirect.check_rules(ctx, redirect.Rules("iptables", frozenset({9000})))
    assert check.status is Status.FAIL
    assert "apply --port 1338" in check.fix
    assert redirect.check_rules(ctx, redirect.Rules(None)).status is Status.WARN


def test_no_secret_from_the_environment_in_local_checks(tmp_path: Path) -> None:
    env = {
        **FARGATE,
        "AWS_CONTAINER_AUTHORIZATION_TOKEN": AUTH_TOKEN,
        "HTTP_PROXY": f"http://u:{AUTH_TOKEN}@proxy:1",
    }
    ctx = context(env, tmp_path, proc_root=fake_proc(tmp_path, pid1_env=env))
    checks = [
        environment.check_platform(ctx),
        environment.check_ecs_env(ctx),
        process.check_pid1_environ(ctx),
        proxy.check_proxy(ctx),
        redirect.check_endpoint_env(ctx, redirect_ok=False),
    ]
    assert_no_secrets(checks)


# ---- where doctor runs ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "pid1_argv", "kind", "command"),
    [
        (FARGATE, SIDECAR_ARGV, place.Kind.SIDECAR, "sidecar"),
        ({}, SIDECAR_ARGV, place.Kind.SIDECAR, "sidecar"),  # `metamock sidecar` tried on a laptop
        (FARGATE, ("/usr/local/bin/metamock", "serve"), place.Kind.SIDECAR, "serve"),
        ({}, ("/usr/local/bin/metamock", "serve"), place.Kind.LOCAL, None),  # the laptop's own
        (FARGATE, ("/usr/bin/python3", "-m", "metamock", "doctor"), place.Kind.TASK, None),
        (FARGATE, ("/app/server",), place.Kind.TASK, None),
        ({}, ("/sbin/init",), place.Kind.LOCAL, None),
    ],
)
def test_place_of(
    environ: dict[str, str],
    pid1_argv: tuple[str, ...],
    kind: place.Kind,
    command: str | None,
    tmp_path: Path,
) -> None:
    ctx = context(environ, tmp_path, proc_root=fake_proc(tmp_path, pid1_argv=pid1_argv))
    where = place.place_of(ctx)
    assert (where.kind, where.command) == (kind, command)
    assert where.fargate is (environ == FARGATE)


def test_place_from_pid1_environment_when_ours_was_emptied(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, pid1_argv=SIDECAR_ARGV, pid1_env=FARGATE)
    where = place.place_of(context({}, tmp_path, proc_root=proc))
    assert (where.kind, where.fargate, where.why) == (place.Kind.SIDECAR, True, "PID 1 is `metamock sidecar`")


def test_endpoint_variable_in_the_sidecar_itself_is_not_a_failure(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, cap_eff=NO_CAPS, pid1_argv=SIDECAR_ARGV, pid1_env=FARGATE)
    check = redirect.check_endpoint_env(context(FARGATE, tmp_path, proc_root=proc), redirect_ok=False)
    assert check.status is Status.SKIP, check
    assert "metamock's own container (PID 1 is `metamock sidecar`)" in check.detail
    assert "the agents the sidecar starts get AWS_EC2_METADATA_SERVICE_ENDPOINT=http://127.0.0.1:1338/" in (
        check.detail
    )
    assert "unless the redirect" not in check.detail  # Fargate: there is none


def test_endpoint_variable_fix_fits_the_place(tmp_path: Path) -> None:
    laptop = redirect.check_endpoint_env(context({}, tmp_path), redirect_ok=False)
    assert laptop.status is Status.FAIL
    assert laptop.fix.startswith("`export AWS_EC2_METADATA_SERVICE_ENDPOINT=http://127.0.0.1:1338/`")
    assert "container" not in laptop.fix
    fargate = redirect.check_endpoint_env(context(FARGATE, tmp_path), redirect_ok=False)
    assert "Fargate grants no NET_ADMIN" in fargate.fix
    ec2 = redirect.check_endpoint_env(context(EC2, tmp_path), redirect_ok=False)
    assert "give the metamock container NET_ADMIN" in ec2.fix


def test_dev_log_matters_in_the_sidecar_only_when_it_runs_programs(tmp_path: Path) -> None:
    bare = fake_proc(tmp_path, pid1_argv=SIDECAR_ARGV)
    check = process.check_dev_log(context(FARGATE, tmp_path, proc_root=bare))
    assert check.status is Status.SKIP
    assert "runs no agents" in check.detail
    with_agent = fake_proc(tmp_path, pid1_argv=(*SIDECAR_ARGV, "--agent", "ssm"))
    assert process.check_dev_log(context(FARGATE, tmp_path, proc_root=with_agent)).status is Status.WARN
    assert (
        process.check_pid1(context(FARGATE, tmp_path, proc_root=bare)).detail == "PID 1 is `metamock sidecar`"
    )
