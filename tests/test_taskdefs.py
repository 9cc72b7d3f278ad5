"""taskdef-examples/*.json: valid RegisterTaskDefinition input with consistent sidecar wiring.

Botocore's own ECS service model and ParamValidator check the shape (offline: the model ships in
botocore). The cross-reference checks encode what the shape cannot: the app waits for a HEALTHY
sidecar, the health check is `metamock healthcheck` on the port the sidecar serves, clients are
pointed at that port (or the netfilter redirect is on, with NET_ADMIN, outside Fargate), and the
capabilities are ones the launch type accepts.
"""

from __future__ import annotations

import json
import re
import shlex
from functools import cache
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore.validate import ParamValidator

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "taskdef-examples"
FILES = sorted(EXAMPLES.glob("*.json"))
DEFAULT_PORT = 1338
DEFAULT_STOP_NOTICE = 10

# ECS limits for healthCheck (RegisterTaskDefinition API reference, HealthCheck).
HEALTH_LIMITS = {
    "interval": (5, 300),
    "timeout": (2, 120),
    "retries": (1, 10),
    "startPeriod": (0, 300),
}
# Fargate task sizes: cpu units -> allowed memory (MiB), the small end of the published table.
FARGATE_SIZES = {
    "256": {512, 1024, 2048},
    "512": set(range(1024, 4097, 1024)),
    "1024": set(range(2048, 8193, 1024)),
    "2048": set(range(4096, 16385, 1024)),
    "4096": set(range(8192, 30721, 1024)),
}
FARGATE_CAPS = {"SYS_PTRACE"}  # the only capability Fargate lets a container add


@cache
def _ecs_input_shape() -> Any:
    model = botocore.session.get_session().get_service_model("ecs")
    return model.operation_model("RegisterTaskDefinition").input_shape


@cache
def _valid_capabilities() -> frozenset[str]:
    """The capability names the ECS API documents, read from botocore's model."""
    doc = _ecs_input_shape().members["containerDefinitions"].member.members["linuxParameters"]
    doc = doc.members["capabilities"].members["add"].documentation
    names = frozenset(re.findall(r'"([A-Z_]+)"', doc.split("Valid values:", 1)[1]))
    assert {"NET_ADMIN", "SYS_PTRACE", "ALL"} <= names
    return names


def _enum_errors(value: Any, shape: Any, where: str = "") -> list[str]:
    """Enum violations: botocore's ParamValidator checks types and names but not enum values."""
    if shape.type_name == "structure" and isinstance(value, dict):
        return [
            err
            for key, item in value.items()
            if key in shape.members
            for err in _enum_errors(item, shape.members[key], f"{where}.{key}")
        ]
    if shape.type_name == "list" and isinstance(value, list):
        return [
            err for i, item in enumerate(value) for err in _enum_errors(item, shape.member, f"{where}[{i}]")
        ]
    if shape.type_name == "map" and isinstance(value, dict):
        return [err for k, v in value.items() for err in _enum_errors(v, shape.value, f"{where}[{k}]")]
    if shape.type_name == "string" and shape.enum and value not in shape.enum:
        return [f"{where.lstrip('.')}: {value!r} not in {shape.enum}"]
    return []


def _validate(td: dict[str, Any]) -> str:
    """Botocore's validation report plus the enum check; empty when the input is valid."""
    report = ParamValidator().validate(td, _ecs_input_shape())
    lines = [report.generate_report()] if report.has_errors() else []
    lines += _enum_errors(td, _ecs_input_shape())
    return "\n".join(lines)


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _sidecar(td: dict[str, Any]) -> dict[str, Any]:
    """The one container whose health check is `metamock healthcheck`."""
    found: list[dict[str, Any]] = [
        c
        for c in td["containerDefinitions"]
        if c.get("healthCheck", {}).get("command", [])[1:3] == ["metamock", "healthcheck"]
    ]
    assert len(found) == 1, "exactly one container must health-check with `metamock healthcheck`"
    return found[0]


def _option(argv: list[str], name: str) -> str | None:
    """The value of `name VALUE` or `name=VALUE` in argv (the last one wins, as argparse does)."""
    value = None
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("environment", [])}


def _serve_port(sidecar: dict[str, Any]) -> int:
    argv = sidecar.get("command", [])
    port = _option(argv, "--port") or _env(sidecar).get("METAMOCK_PORT") or DEFAULT_PORT
    return int(port)


def _fargate(td: dict[str, Any]) -> bool:
    return "FARGATE" in td.get("requiresCompatibilities", [])


def _caps(container: dict[str, Any]) -> list[str]:
    add: list[str] = container.get("linuxParameters", {}).get("capabilities", {}).get("add", [])
    return add


def test_examples_exist() -> None:
    names = {p.name for p in FILES}
    assert {"fargate-basic.json", "fargate-agents.json", "ec2-awsvpc-netfilter.json"} <= names
    readme = (EXAMPLES / "README.md").read_text()
    for name in names:
        assert name in readme, f"{name} is not described in taskdef-examples/README.md"


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_validates_against_botocore_shape(path: Path) -> None:
    report = _validate(_load(path))
    assert not report, report


def test_validator_catches_a_broken_example() -> None:
    """Guard against a validator that accepts anything."""
    td = _load(EXAMPLES / "fargate-basic.json")
    td["containerDefinitions"][1]["dependsOn"][0]["condition"] = "READY"
    td["containerDefinitions"][0]["healthCheck"]["interval"] = "5"
    td["bogus"] = 1
    report = _validate(td)
    assert "bogus" in report
    assert "interval" in report
    assert "containerDefinitions[1].dependsOn[0].condition: 'READY'" in report


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_cross_references(path: Path) -> None:
    td = _load(path)
    containers = td["containerDefinitions"]
    names = [c["name"] for c in containers]
    assert len(names) == len(set(names)), "container names must be unique"
    sidecar = _sidecar(td)
    port = _serve_port(sidecar)
    argv = sidecar.get("command", [])
    netfilter_env = _env(sidecar).get("METAMOCK_NETFILTER", "").lower()
    netfilter = "--netfilter" in argv or netfilter_env in {"1", "true", "on", "yes"}

    # The sidecar: essential, health-checked on the port it serves, loopback only.
    assert sidecar.get("essential", True) is True
    health = sidecar["healthCheck"]
    assert health["command"][0] == "CMD", "exec form: no shell needed in the image"
    assert int(_option(health["command"], "--port") or DEFAULT_PORT) == port
    for key, (low, high) in HEALTH_LIMITS.items():
        if key in health:
            assert low <= health[key] <= high, f"healthCheck.{key} outside {low}..{high}"
    assert "--allow-remote" not in argv, "a non-loopback listener hands the task role to the VPC"
    assert not any(m.get("containerPort") == port for m in sidecar.get("portMappings", []))
    init = sidecar.get("linuxParameters", {}).get("initProcessEnabled")
    assert not init, "metamock is a correct PID 1 itself: no tini"
    stop_notice = int(_option(argv, "--stop-notice") or DEFAULT_STOP_NOTICE)
    assert sidecar.get("stopTimeout", 30) > stop_notice, "stopTimeout must outlast the stop notice"

    # Every other container: waits for a HEALTHY sidecar and can find it.
    for container in containers:
        for dep in container.get("dependsOn", []):
            assert dep["containerName"] in names, f"{container['name']}: unknown dependency"
            assert dep["containerName"] != container["name"]
        if container is sidecar:
            continue
        healthy = {"containerName": sidecar["name"], "condition": "HEALTHY"}
        assert healthy in container.get("dependsOn", [])
        endpoint = _env(container).get("AWS_EC2_METADATA_SERVICE_ENDPOINT")
        if endpoint is not None:
            assert endpoint == f"http://127.0.0.1:{port}/"
        else:
            assert netfilter, f"{container['name']}: no endpoint variable and no --netfilter"
        if _fargate(td):
            assert endpoint is not None, "Fargate has no netfilter: set the endpoint variable"

    # Capabilities valid for the launch type; the ones the sidecar's features need are present.
    for container in containers:
        caps = _caps(container)
        assert set(caps) <= _valid_capabilities(), caps
        if _fargate(td):
            assert set(caps) <= FARGATE_CAPS, f"Fargate accepts only {sorted(FARGATE_CAPS)}"
            assert not container.get("privileged")
    if netfilter:
        assert not _fargate(td), "netfilter needs NET_ADMIN, which Fargate does not grant"
        assert "NET_ADMIN" in _caps(sidecar)
        # Capabilities added by ECS are effective for root only.
        assert sidecar.get("user") in {"0", "root"}
    if td.get("pidMode") == "task":
        # PID 1 is the pause process; reading another container's environ needs SYS_PTRACE.
        assert "SYS_PTRACE" in _caps(sidecar)

    # The task itself.
    assert td["networkMode"] == "awsvpc", "the app must share the sidecar's 127.0.0.1"
    if _fargate(td):
        assert int(td["memory"]) in FARGATE_SIZES[td["cpu"]], "not a Fargate task size"


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_agent_presets_have_their_settings(path: Path) -> None:
    td = _load(path)
    sidecar = _sidecar(td)
    argv = sidecar.get("command", [])
    agents = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--agent"]
    assert set(agents) <= {"ssm", "cloudwatch"}
    for i, arg in enumerate(argv[:-1]):
        if arg == "--run":
            name, _, command = argv[i + 1].partition("=")
            assert name
            assert shlex.split(command)
    if "cloudwatch" in agents:
        config = json.loads(_env(sidecar)["CW_CONFIG_CONTENT"])
        assert "metrics" in config or "logs" in config
    if agents:
        assert sidecar.get("user") in {"0", "root"}, "the SSM and CloudWatch agents run as root"
        restart = _option(argv, "--restart")
        assert restart in {None, "always", "on-failure", "never"}
