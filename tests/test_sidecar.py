"""The sidecar's parts without PID 1: options, child environments, exports, presets."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from metamock import agents, envexport
from metamock.commands import sidecar as command
from metamock.endpoint import client_host, endpoint_url
from metamock.errors import SettingsError
from metamock.sidecar import (
    SidecarOptions,
    child_environment,
    exported_variables,
    write_exports,
)
from metamock.supervisor import ChildSpec, Restart, Supervisor
from tests.conftest import REPO
from tests.envexport_support import wait_exec
from tests.fakes.ecs_agent import fargate_env

GOLDEN = REPO / "tests" / "golden" / "env"


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return parser.parse_args(argv)


def test_programs_keep_command_line_order_and_split_without_a_shell() -> None:
    args = parse(
        "--run", "reg=amazon-ssm-agent -register -code 'a b' -id \"x y\"",
        "--agent", "cloudwatch",
        "--run", "echo=/bin/echo $(touch x) `y` ;",
        "--agent", "ssm",
    )  # fmt: skip
    options = command.options_from_args(args, {})
    assert [p.name for p in options.programs] == ["reg", "cloudwatch", "echo", "ssm"]
    assert options.programs[0].argv == ("amazon-ssm-agent", "-register", "-code", "a b", "-id", "x y")
    assert options.programs[2].argv == ("/bin/echo", "$(touch", "x)", "`y`", ";")
    assert options.restart is Restart.ON_FAILURE
    assert options.netfilter is None  # decided by privilege at start


@pytest.mark.parametrize(
    ("command", "argv"),
    [  # the rules docs/sidecar.md and `--run`'s help state, row by row
        ("a \tb\nc", ["a", "b", "c"]),
        ("'a \\ \"$b'", ['a \\ "$b']),
        ('"q\\" b\\\\ c\\$HOME \\n"', ['q" b\\ c\\$HOME \\n']),
        ("\\$5 \\x", ["$5", "x"]),
        ("a\"b\"'c'", ["abc"]),
        ("x \"\" ''", ["x", "", ""]),
        ("$VAR ${VAR} ~ *.log $(id) `id`", ["$VAR", "${VAR}", "~", "*.log", "$(id)", "`id`"]),
        ("a;b | c && d > e #f", ["a;b", "|", "c", "&&", "d", ">", "e", "#f"]),
        ('/app/run --name "my app" --price \\$5', ["/app/run", "--name", "my app", "--price", "$5"]),
    ],
)
def test_run_splits_by_the_documented_rules(command: str, argv: list[str]) -> None:
    assert list(agents.parse_run(f"x={command}").argv) == argv


def test_run_help_states_the_rules() -> None:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    text = " ".join(parser.format_help().split())
    assert "shlex.split" in text
    assert "stays \\$, unlike a shell" in text


@pytest.mark.parametrize(
    ("argv", "setting"),
    [
        (["--run", "noequals"], "--run"),
        (["--run", "bad name=x"], "--run"),
        (["--run", "x="], "--run"),
        (["--run", "x=a 'unterminated"], "--run"),
        (["--run", "ssm=true", "--agent", "ssm"], "--agent/--run"),
        (["--grace", "-1"], "--grace"),
        (["--allow", "A=B"], "--allow"),
        (["--env-pid", "one"], "--env-pid"),
    ],
)
def test_bad_options_name_the_setting(argv: list[str], setting: str) -> None:
    with pytest.raises(SettingsError) as info:
        command.options_from_args(parse(*argv), {})
    assert info.value.setting == setting
    assert info.value.exit_code == 2


def test_bad_option_is_one_line_and_exit_2_before_listening() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "metamock", "sidecar", "--port", "1", "--run", "x=a 'open"],
        capture_output=True, text=True, timeout=30, check=False, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "--run" in result.stderr


def test_netfilter_explicit_or_by_privilege() -> None:
    assert command.options_from_args(parse("--netfilter"), {}).netfilter is True
    assert command.options_from_args(parse(), {"METAMOCK_NETFILTER": "false"}).netfilter is None


def test_child_environment_drops_static_keys_adds_endpoint() -> None:
    base = {
        "PATH": "/bin",
        "AWS_ACCESS_KEY_ID": "AKIA",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_SESSION_TOKEN": "t",
    }
    exported = {"AWS_REGION": b"us-west-2", "ECS_CONTAINER_METADATA_URI_V4": b"http://x\xff"}
    program = agents.preset("cloudwatch")
    env = child_environment(base, exported, "http://127.0.0.1:1338/", program, envexport.AllowList())
    assert env == {
        "PATH": "/bin",
        "AWS_REGION": "us-west-2",
        "ECS_CONTAINER_METADATA_URI_V4": "http://x\udcff",
        "AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:1338/",
        "RUN_IN_CONTAINER": "True",
    }
    allowed = envexport.AllowList.with_extra(["AWS_ACCESS_KEY_ID"])
    env = child_environment(base, exported, "http://127.0.0.1:1338/", program, allowed)
    assert env["AWS_ACCESS_KEY_ID"] == "AKIA"
    assert "AWS_SECRET_ACCESS_KEY" not in env


def test_endpoint_url() -> None:
    """Where the sidecar's children are pointed (settings.endpoint_url of client_host)."""

    def url(hosts: tuple[str, ...], port: int) -> str:
        return endpoint_url(port, client_host(hosts))

    assert url(("127.0.0.1", "::1"), 1338) == "http://127.0.0.1:1338/"
    assert url(("::1",), 80) == "http://[::1]:80/"
    assert url(("0.0.0.0",), 1338) == "http://127.0.0.1:1338/"
    assert url(("::",), 1338) == "http://[::1]:1338/"


def test_exported_variables_from_own_environment_or_a_pid() -> None:
    own = {b"AWS_REGION": b"r", b"HOME": b"/root", b"AWS_ACCESS_KEY_ID": b"AKIA"}
    assert exported_variables(SidecarOptions(), own) == {"AWS_REGION": b"r"}
    env = {k.encode(): v.encode() for k, v in fargate_env().items()}
    proc = subprocess.Popen(["sleep", "30"], env={b"PATH": b"/bin:/usr/bin", **env})
    try:
        wait_exec(proc.pid)
        got = exported_variables(SidecarOptions(env_pid=str(proc.pid)), own)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert got == dict(sorted((k.decode(), v) for k, v in env.items()))


def test_exports_written_where_agents_read_them(tmp_path: Path) -> None:
    options = SidecarOptions(
        programs=(agents.preset("ssm"), agents.preset("cloudwatch"), agents.parse_run("x=/bin/true")),
        profile_script=tmp_path / "etc/profile.d/metamock-ecs.sh",
        systemd_dir=tmp_path / "etc/systemd/system",
    )
    exported = {
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": b"/v2/credentials/6e2b7c2a",
        "AWS_REGION": b"us-west-2",
    }
    exports = write_exports(options, exported, "http://127.0.0.1:1338/")
    written = exports.paths
    rel = sorted(str(p.relative_to(tmp_path)) for p in written)
    assert rel == [
        "etc/profile.d/metamock-ecs.sh",
        "etc/systemd/system/amazon-cloudwatch-agent.service.d/metamock-ecs.conf",
        "etc/systemd/system/amazon-ssm-agent.service.d/metamock-ecs.conf",
    ]
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    cloudwatch = written[2] if "cloudwatch" in str(written[2]) else written[1]
    for name, path in (("sidecar-profile.sh", written[0]), ("sidecar-cloudwatch.conf", cloudwatch)):
        golden = GOLDEN / name
        if os.environ.get("UPDATE_GOLDEN"):  # not METAMOCK_*: conftest scrubs those
            golden.write_bytes(path.read_bytes())
        assert path.read_bytes() == golden.read_bytes(), name
    exports.remove()  # at exit: nothing of it left, not even the directories it made
    assert not (tmp_path / "etc").exists()


def test_unwritable_export_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    options = SidecarOptions(profile_script=blocker / "profile.sh", systemd_dir=None)
    with caplog.at_level(logging.WARNING):
        assert write_exports(options, {}, "http://127.0.0.1:1338/").files == []
    assert "cannot write" in caplog.text


async def test_ssm_preset_removes_the_stale_ipc_directory(tmp_path: Path) -> None:
    ipc = tmp_path / "var/lib/amazon/ssm/ipc"
    (ipc / "health").mkdir(parents=True)
    seen = tmp_path / "seen"
    fake = tmp_path / "amazon-ssm-agent"
    fake.write_text(f'#!/bin/sh\n[ -e "{ipc}" ] && echo present > {seen} || echo absent > {seen}\n')
    fake.chmod(0o755)
    program = dataclasses.replace(agents.preset("ssm"), argv=(str(fake),), stale_paths=(ipc,))
    spec = ChildSpec("ssm", program.argv, {"PATH": "/bin:/usr/bin"}, Restart.NEVER, program.before_start)
    sup = Supervisor([spec])
    await sup.start()
    try:
        for _ in range(200):
            if seen.exists() and seen.read_text():
                break
            await asyncio.sleep(0.02)
    finally:
        sup.request_stop()
        await sup.wait()
        await sup.close()
    assert seen.read_text() == "absent\n"


def test_presets_follow_the_agents_images() -> None:
    ssm, cloudwatch = agents.preset("ssm"), agents.preset("cloudwatch")
    assert ssm.argv == ("/usr/bin/amazon-ssm-agent",)
    assert Path("/var/lib/amazon/ssm/ipc") in ssm.stale_paths
    assert "RUN_IN_CONTAINER" not in ssm.env
    assert cloudwatch.argv == ("/opt/aws/amazon-cloudwatch-agent/bin/start-amazon-cloudwatch-agent",)
    assert cloudwatch.env == {"RUN_IN_CONTAINER": "True"}
    with pytest.raises(SettingsError, match="--agent"):
        agents.preset("datadog")
