"""Config precedence (flags > env > file > defaults) and every bad-config error."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from metamock.errors import SettingsError
from metamock.settings import ConfigFile, Settings
from tests.servers import serve_argv


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "metamock.toml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    s = Settings.load({}, {})
    assert s.hosts == ("127.0.0.1", "::1")
    assert (s.port, s.source, s.tokens, s.hop_limit, s.stop_notice) == (1338, "auto", "optional", 1, 10.0)
    assert s.resolved_source() == "local"


def test_auto_source_is_ecs_when_tmde_is_set() -> None:
    s = Settings.load({}, {"ECS_CONTAINER_METADATA_URI_V4": "http://169.254.170.2/v4/x"})
    assert s.resolved_source() == "ecs"


def test_precedence_flag_env_file_default(tmp_path: Path) -> None:
    cfg = write(tmp_path, "[server]\nport = 3000\ntokens = 'required'\nhop-limit = 3\n")
    env = {"METAMOCK_PORT": "2000", "METAMOCK_TOKENS": "optional", "METAMOCK_CONFIG": str(cfg)}
    s = Settings.load({"port": "1000"}, env)
    assert s.port == 1000  # flag beats env
    assert s.tokens == "optional"  # env beats file
    assert s.hop_limit == 3  # file beats default
    assert Settings.load({}, env).port == 2000
    assert Settings.load({}, {"METAMOCK_CONFIG": str(cfg)}).port == 3000


@pytest.mark.parametrize(
    ("flags", "env", "setting"),
    [
        ({"port": "70000"}, {}, "--port"),
        ({"port": "abc"}, {}, "--port"),
        ({}, {"METAMOCK_PORT": "-1"}, "METAMOCK_PORT"),
        ({"tokens": "sometimes"}, {}, "--tokens"),
        ({}, {"METAMOCK_SOURCE": "cloud"}, "METAMOCK_SOURCE"),
        ({"hop_limit": "0"}, {}, "--hop-limit"),
        ({"hop_limit": "65"}, {}, "--hop-limit"),
        ({}, {"METAMOCK_NETFILTER": "maybe"}, "METAMOCK_NETFILTER"),
        ({"stop_notice": "-3"}, {}, "--stop-notice"),
        ({"host": ["not-an-ip"]}, {}, "--host"),
        ({"host": ["10.0.0.1"]}, {}, "--host"),
        ({}, {"METAMOCK_HOST": "0.0.0.0"}, "--host"),
        ({"role_arn": "my-role"}, {}, "--role-arn"),
        ({"config": "/nonexistent/metamock.toml"}, {}, "--config"),
        ({"task_metadata": "/nonexistent/task.json"}, {}, "--task-metadata"),
    ],
)
def test_bad_values_name_the_setting(flags: dict[str, Any], env: dict[str, str], setting: str) -> None:
    with pytest.raises(SettingsError) as err:
        Settings.load(flags, env)
    assert err.value.setting == setting
    assert "\n" not in str(err.value)


def test_remote_host_allowed_with_allow_remote() -> None:
    s = Settings.load({"host": ["0.0.0.0"], "allow_remote": True}, {})
    assert s.hosts == ("0.0.0.0",)


@pytest.mark.parametrize(
    ("text", "setting"),
    [
        ("port = [", "--config"),
        ("[server]\nport = 'x'\n", "config server.port"),
        ("[server]\nbogus = 1\n", "config server.bogus"),
        ("[nonsense]\n", "config nonsense"),
        ("[meta-data]\n'a/../b' = 'x'\n", "config meta-data.a/../b"),
        ("[meta-data]\n'x' = 2024-01-01\n", "config meta-data.x"),
        ("user-data = 5\n", "config user-data"),
        ("[tags]\n'a/b' = 'x'\n", "config tags.a/b"),
        ("[iam]\nrole-name = ''\n", "config iam.role-name"),
        ("[[interfaces]]\nsubnet = 'x'\n", "config interfaces[0].mac"),
    ],
)
def test_bad_config_files_name_the_setting(tmp_path: Path, text: str, setting: str) -> None:
    with pytest.raises(SettingsError) as err:
        Settings.load({"config": str(write(tmp_path, text))}, {})
    assert err.value.setting == setting


def test_task_metadata_must_be_an_object(tmp_path: Path) -> None:
    path = tmp_path / "task.json"
    path.write_text("[1, 2]")
    with pytest.raises(SettingsError, match="JSON object"):
        Settings.load({"task_metadata": str(path)}, {})


def test_config_sections_parse(tmp_path: Path) -> None:
    cfg = ConfigFile.read(
        write(
            tmp_path,
            "user-data = 'hi'\n[tags]\nName = 'web'\n[iam]\nrole-name = 'r'\n[meta-data]\n'x/y' = 'z'\n",
        )
    )
    assert cfg.user_data == b"hi"
    assert cfg.tags == {"Name": "web"}
    assert cfg.role_name == "r"
    assert cfg.meta_data == {"x/y": "z"}


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--port", "99999"], "--port"),
        (["--tokens", "nope"], "--tokens"),
        (["--host", "10.1.2.3"], "--allow-remote"),
    ],
)
def test_cli_bad_config_is_one_line_exit_2_before_listening(args: list[str], needle: str) -> None:
    proc = subprocess.run(
        serve_argv(*args, source=None, host=None),
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0]


def test_scenario_flags_merge_over_the_file(tmp_path: Path) -> None:
    cfg = write(
        tmp_path, "[scenarios.spot]\naction = 'hibernate'\ndelay = 10\n[scenarios.rebalance]\ndelay = 5\n"
    )
    s = Settings.load(
        {
            "config": str(cfg),
            "scenario": ["spot:delay=0,action=stop", "maintenance:code=system-reboot,delay=5"],
        },
        {},
    )
    assert s.config.scenarios["spot"] == {"delay": 0, "action": "stop"}  # the flag replaces the file's spot
    assert s.config.scenarios["rebalance"] == {"delay": 5}  # the file's other scenarios stay
    assert s.config.scenarios["maintenance"] == [{"code": "system-reboot", "delay": 5}]


@pytest.mark.parametrize("flag", ["spot:action=melt", "spot:delay", "nonsense:x=1", "spot:delay=-1"])
def test_bad_scenario_flags_name_the_flag(flag: str) -> None:
    with pytest.raises(SettingsError) as err:
        Settings.load({"scenario": [flag]}, {})
    assert err.value.setting == "--scenario"
