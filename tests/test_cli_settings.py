"""Settings as a user types them, through `python -m metamock ...`: the one port parser of every
command, `--scenario`, config files with typos, and the advised endpoint. Commands that could
reach the network if a check failed run in a namespace with only `lo`."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from metamock import settings
from metamock.config import LEAF_KEYS
from metamock.endpoint import client_host, endpoint_advice, endpoint_url
from metamock.settings import Settings
from tests.cli_support import assert_one_line_exit_2, cli_env
from tests.conftest import make_netns
from tests.netns import REPO, NetNS
from tests.servers import serve, serve_argv

PY = sys.executable


@pytest.fixture(scope="module")
def lo_ns() -> Iterator[NetNS]:
    ns = make_netns(ecs_shaped=False)
    try:
        yield ns
    finally:
        ns.close()


# -- the port: one parser, one message, for every command that reads it --------------------------

PORT_COMMANDS = {
    "serve": ["serve", "--source", "local"],
    "sidecar": ["sidecar", "--source", "local", "--profile-script", "", "--systemd-dir", ""],
    "healthcheck": ["healthcheck"],
    "trigger": ["trigger", "spot"],
    "trigger --status": ["trigger", "--status"],
    "netfilter": ["netfilter", "status"],
    "doctor": ["doctor", "--offline"],
    "status": ["status"],
}
BAD_PORTS = {
    "METAMOCK_PORT=abc": ({"METAMOCK_PORT": "abc"}, [], "METAMOCK_PORT: 'abc': expected an integer"),
    "METAMOCK_PORT=70000": ({"METAMOCK_PORT": "70000"}, [], "METAMOCK_PORT: '70000': out of range"),
    "--port abc": ({}, ["--port", "abc"], "--port: 'abc': expected an integer"),
}


@pytest.mark.root
@pytest.mark.parametrize("bad", list(BAD_PORTS))
@pytest.mark.parametrize("command", list(PORT_COMMANDS))
def test_a_bad_port_is_one_line_and_exit_2(lo_ns: NetNS, command: str, bad: str) -> None:
    env, extra, message = BAD_PORTS[bad]
    argv = [PY, "-m", "metamock", *PORT_COMMANDS[command], *extra]
    proc = lo_ns.run(argv, env=cli_env(**env), cwd=REPO, timeout=60)
    assert_one_line_exit_2(proc, message)


@pytest.mark.parametrize("command", ["healthcheck", "trigger", "status"])
def test_client_commands_stay_standard_library(command: str) -> None:
    """healthcheck and trigger run in health checks and by hand: no aiohttp, boto3 or asyncio."""
    code = (
        "import sys\nfrom metamock import cli\n"
        f"cli.main([{command!r}, '--port', 'abc'])\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in {'aiohttp', 'boto3', 'botocore', "
        "'aiobotocore', 'asyncio', 'yarl', 'multidict'})\nprint(heavy)\n"
    )
    proc = subprocess.run(
        [PY, "-c", code], env=cli_env(), capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr


# -- `--scenario`, a real flag ------------------------------------------------------------------


@pytest.mark.root
def test_scenario_flag_serves_the_spot_notice(lo_ns: NetNS) -> None:
    server = serve(
        "--stop-notice", "0", "--scenario", "spot:delay=0,action=stop", ns=lo_ns, env=cli_env(), ready="log"
    )
    try:
        got = lo_ns.run(
            [
                "curl",
                "-s",
                "-w",
                " %{http_code}",
                "http://127.0.0.1:1338/latest/meta-data/spot/instance-action",
            ]
        )
        body, _, status = got.stdout.rpartition(" ")
        assert status == "200", got
        assert '"action": "stop"' in body
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("meteor", "--scenario: meteor"),
        ("spot:acton=stop", "--scenario: spot.acton: unknown option"),
        ("spot:delay", "--scenario: 'spot:delay': options are key=value"),
        ("spot:delay=-1", "--scenario: spot.delay"),
    ],
)
def test_a_bad_scenario_flag_is_one_line_and_exit_2(value: str, needle: str) -> None:
    proc = subprocess.run(
        serve_argv("--scenario", value, port=0), env=cli_env(), capture_output=True, text=True, timeout=30,
        check=False,
    )  # fmt: skip
    assert_one_line_exit_2(proc, "metamock serve: " + needle)


def test_every_setting_is_a_flag_of_serve_and_sidecar() -> None:
    """The table is the one declaration: each option is an argparse flag of both commands, each
    `[server]` key is an in-file option, and the collected flag names are the argparse dests."""
    for command in ("serve", "sidecar"):
        proc = subprocess.run(
            [PY, "-m", "metamock", command, "--help"], env=cli_env(), capture_output=True, text=True,
            timeout=30, check=False,
        )  # fmt: skip
        for option in settings.options().values():
            assert option.flag in proc.stdout, (command, option.flag)
    assert settings.flag_names() == tuple(o.dest for o in settings.options().values())
    assert "scenario" in settings.flag_names()
    defaults = Settings.load({}, {})
    assert (defaults.port, defaults.hop_limit, defaults.scenario_flags) == (settings.DEFAULT_PORT, 1, ())


def test_server_keys_come_from_the_table(tmp_path: Path) -> None:
    config = tmp_path / "metamock.toml"
    config.write_text("[server]\nscenario = 'spot'\n")
    proc = subprocess.run(
        serve_argv("--config", str(config), source=None, host=None), env=cli_env(), capture_output=True,
        text=True, timeout=30, check=False,
    )  # fmt: skip
    expected = ", ".join(sorted(o.file_key for o in settings.options().values() if o.in_file))
    assert_one_line_exit_2(proc, "config server.scenario: unknown key", expected)


# -- config files: every section checked ---------------------------------------------------------

BAD_CONFIGS = {
    "iam typo": ('[iam]\nrolename = "x"\n', "config iam.rolename: unknown key; expected one of role-name"),
    "iam bad role": ('[iam]\nrole-name = "a b"\n', "config iam.role-name: must be an IAM role name"),
    "mac": ('[[interfaces]]\nmac = "zz"\n', "config interfaces[0].mac: 'zz': expected a MAC"),
    "no mac": ("[[interfaces]]\nsubnet-id = 'subnet-0123456789abcdef0'\n", "config interfaces[0].mac"),
    "duplicate mac": (
        '[[interfaces]]\nmac = "0a:00:00:00:00:02"\n[[interfaces]]\nmac = "0A:00:00:00:00:02"\n',
        "config interfaces[1].mac: '0A:00:00:00:00:02' is already interfaces[0]",
    ),
    "IPv4Adresses": (
        '[[interfaces]]\nmac = "0a:00:00:00:00:02"\nIPv4Adresses = ["10.0.1.9"]\n',
        "config interfaces[0].IPv4Adresses: unknown key; expected one of IPv4Addresses",
    ),
    "bad IPv4": (
        '[[interfaces]]\nmac = "0a:00:00:00:00:02"\nIPv4Addresses = ["10.0.1.300"]\n',
        "config interfaces[0].IPv4Addresses: '10.0.1.300' is not an IPv4 address",
    ),
    "IPv4 as a string": (
        '[[interfaces]]\nmac = "0a:00:00:00:00:02"\nIPv4Addresses = "10.0.1.9"\n',
        "config interfaces[0].IPv4Addresses: must be a non-empty array of IPv4 addresses",
    ),
    "IPv6 in IPv4": (
        '[[interfaces]]\nmac = "0a:00:00:00:00:02"\nIPv4Addresses = ["2001:db8::1"]\n',
        "config interfaces[0].IPv4Addresses: '2001:db8::1' is not an IPv4 address",
    ),
    "cidr with host bits": (
        '[[interfaces]]\nmac = "0a:00:00:00:00:02"\nIPv4SubnetCIDRBlock = "10.0.1.5/24"\n',
        "config interfaces[0].IPv4SubnetCIDRBlock: '10.0.1.5/24' is not an IPv4 CIDR block",
    ),
    "leaf not a string": (
        '[[interfaces]]\nmac = "0a:00:00:00:00:02"\ndevice-number = 1\n',
        "config interfaces[0].device-number: 1: expected a number (as a string)",
    ),
    "subnet id": (
        '[[interfaces]]\nmac = "0a:00:00:00:00:02"\nsubnet-id = "my-subnet"\n',
        "config interfaces[0].subnet-id: 'my-subnet': expected an id like subnet-",
    ),
    "tag key with a space": ('[tags]\n"Cost Center" = "x"\n', "config tags.Cost Center: tag keys are"),
    "tag value a number": ("[tags]\nName = 5\n", "config tags.Name: tag values are strings"),
    "tag key _index": ('[tags]\n_index = "x"\n', "config tags._index"),
    "scenario option": ('[scenarios.spot]\nacton = "stop"\n', "config scenarios.spot.acton: unknown option"),
    "scenario kind": ("[scenarios.meteor]\ndelay = 1\n", "config scenarios.meteor: unknown scenario"),
    "scenario value": ('[scenarios.spot]\naction = "melt"\n', "config scenarios.spot.action: 'melt'"),
    "server typo": ("[server]\nprot = 1\n", "config server.prot: unknown key"),
    "server value": ("[server]\nhop-limit = 'x'\n", "config server.hop-limit: 'x': expected an integer"),
    "section typo": ("[tag]\nName = 'x'\n", "config tag: unknown section"),
    "date in JSON": ('[meta-data]\n"custom/x" = { when = 2024-01-01 }\n', "config meta-data.custom/x: "),
    "dynamic path": ('[dynamic]\n"a//b" = "x"\n', "config dynamic.a//b: paths are"),
    "user-data": ("user-data = 5\n", "config user-data: must be a string"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_a_config_typo_is_refused_before_listening(tmp_path: Path, case: str) -> None:
    text, needle = BAD_CONFIGS[case]
    config = tmp_path / "metamock.toml"
    config.write_text(text)
    proc = subprocess.run(
        serve_argv("--config", str(config), port=0),
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert_one_line_exit_2(proc, "metamock serve: " + needle)


def test_the_documented_config_is_accepted(tmp_path: Path) -> None:
    """README's and docs/scenarios.md's examples, in one file, pass the checks."""
    config = tmp_path / "metamock.toml"
    config.write_text(
        'user-data = "#cloud-config\\n"\n'
        '[server]\ntokens = "required"\n'
        '[meta-data]\n"instance-type" = "m5.large"\n"custom/json" = { a = 1, b = [1, "x"] }\n'
        '"ami-launch-index" = false\n'
        '[tags]\nName = "web"\nteam = "platform"\n"aws:autoscaling:groupName" = "g"\n'
        '[iam]\nrole-name = "my-role"\n'
        '[[interfaces]]\nmac = "0e:00:00:00:00:02"\nIPv4Addresses = ["10.0.1.9"]\n'
        'IPv4SubnetCIDRBlock = "10.0.1.0/24"\nIPv6Addresses = ["2001:db8::9"]\n'
        'subnet-id = "subnet-0123456789abcdef0"\nsecurity-group-ids = "sg-0123456789abcdef0\\nsg-01234567"\n'
        '[scenarios.spot]\naction = "stop"\ndelay = 30\n[scenarios.asg]\nterminate-after = 120\n'
    )
    loaded = Settings.load({"config": str(config)}, {})
    assert loaded.config.role_name == "my-role"
    assert loaded.tokens == "required"


def test_interface_keys_are_the_leaves_translate_builds() -> None:
    from metamock.translate import Identity, interface_tree

    ident = Identity.from_task_arn("arn:aws:ecs:us-west-2:123456789012:task/c/0123")
    _, tree = interface_tree({}, ident, 1, "us-west-2", None)
    assert set(LEAF_KEYS) == set(tree) - {"mac"}


# -- where clients are told to go ----------------------------------------------------------------


def test_endpoint_advice_and_client_host() -> None:
    assert endpoint_advice(1338) == "AWS_EC2_METADATA_SERVICE_ENDPOINT=http://127.0.0.1:1338/"
    assert endpoint_advice(80, "::1") == "AWS_EC2_METADATA_SERVICE_ENDPOINT=http://[::1]:80/"
    assert endpoint_url(9, "127.0.0.2") == "http://127.0.0.2:9/"
    assert client_host(("127.0.0.1", "::1")) == "127.0.0.1"
    assert client_host(("::1",)) == "::1"
    assert client_host(("::1", "127.0.0.5")) == "127.0.0.5"
    assert client_host(("0.0.0.0",)) == "127.0.0.1"
    assert client_host(("::",)) == "::1"
    assert client_host(("10.1.2.3",)) == "10.1.2.3"


@pytest.mark.root
@pytest.mark.parametrize(
    ("hosts", "advice"),
    [
        (["--host", "::1"], "AWS_EC2_METADATA_SERVICE_ENDPOINT=http://[::1]:1338/"),
        ([], "AWS_EC2_METADATA_SERVICE_ENDPOINT=http://127.0.0.1:1338/"),
    ],
)
def test_the_start_up_line_advises_an_address_it_listens_on(
    lo_ns: NetNS, hosts: list[str], advice: str
) -> None:
    server = serve(
        "--stop-notice", "0", *hosts, host=None, ns=lo_ns, env=cli_env(), ready=None, stderr=subprocess.PIPE
    )
    try:
        line = server.wait_for_line("serving IMDS")
        assert line.rstrip().endswith(advice), line
        host = "[::1]" if hosts else "127.0.0.1"
        got = lo_ns.run(["curl", "-sf", f"http://{host}:1338/latest/meta-data/instance-id"])
        assert got.returncode == 0 and got.stdout.startswith("i-"), got
    finally:
        assert server.stop() == 0
