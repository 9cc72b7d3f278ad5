"""The deploy path: the CloudFormation template passes cfn-lint, and matches its task-definition example.

`taskdef-examples/cloudformation/fargate-sidecar.yaml` is `taskdef-examples/fargate-basic.json` as a
stack. cfn-lint (the field's own validator, run through its CLI as a user would) checks the template
against CloudFormation's resource schemas, which it ships: it needs no network, and a test runs it in
a namespace with only `lo` to keep it so. The cross-check compares the template's container
definitions with the JSON's (the image and the log group aside, which are parameters and resources
there), so the two cannot drift. The IAM checks hold the roles to what docs/deploy.md says they need,
and the doc's policies and `metamock sidecar` lines are checked too.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.netns import NetNS

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = REPO / "taskdef-examples" / "cloudformation" / "fargate-sidecar.yaml"
EXAMPLE = REPO / "taskdef-examples" / "fargate-basic.json"
DEPLOY_DOC = REPO / "docs" / "deploy.md"
# cfn-lint's exit code is a bit mask: 2 error, 4 warning, 8 informational; 1 is a crash or usage error.
CFN_LINT_FAILED = 1 | 2


class _CfnLoader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML is untyped here (no types-PyYAML)
    """YAML with CloudFormation's short-form intrinsics (`!Ref X` -> {"Ref": "X"}, `!Sub` -> Fn::Sub)."""


def _intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        assert isinstance(node, yaml.MappingNode)
        value = loader.construct_mapping(node, deep=True)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


_CfnLoader.add_multi_constructor("!", _intrinsic)


def _template() -> dict[str, Any]:
    data: dict[str, Any] = yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)  # noqa: S506 (a SafeLoader)
    return data


def _example() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(EXAMPLE.read_text())
    return data


def _cfn_lint() -> str:
    """The cfn-lint command installed with the test extra (next to this Python), else on PATH."""
    here = Path(sys.executable).parent / "cfn-lint"
    found = str(here) if here.exists() else shutil.which("cfn-lint")
    assert found, "cfn-lint is not installed: pip install -e '.[test]'"
    return found


def _lint_argv(path: Path) -> list[str]:
    # Every region cfn-lint knows, so a resource type or value missing in one region is caught.
    return [_cfn_lint(), "--regions", "ALL_REGIONS", "--", str(path)]


def _report(proc: subprocess.CompletedProcess[str]) -> str:
    return f"cfn-lint exit {proc.returncode}:\n{proc.stdout}{proc.stderr}"


def _pascal(value: Any, *, free_keys: bool = False) -> Any:
    """The RegisterTaskDefinition JSON's camelCase keys as CloudFormation's PascalCase.

    Values are kept; log driver `options` keep their keys (they are the driver's, not the API's)."""
    if isinstance(value, list):
        return [_pascal(item) for item in value]
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            name = key if free_keys else key[:1].upper() + key[1:]
            out[name] = _pascal(item, free_keys=key == "options")
        return out
    return value


def _drift(template: dict[str, Any], example: dict[str, Any]) -> list[str]:
    """How the template's task definition differs from the example's; empty when they agree."""
    problems: list[str] = []
    resources = template["Resources"]
    params = template["Parameters"]
    td = resources["TaskDefinition"]["Properties"]
    want = _pascal(example)

    for key in ("NetworkMode", "RequiresCompatibilities", "Cpu", "Memory", "PidMode"):
        if td.get(key) != want.get(key):
            problems.append(f"task {key}: template {td.get(key)!r}, example {want.get(key)!r}")
    platform, want_platform = td.get("RuntimePlatform", {}), want.get("RuntimePlatform", {})
    if platform.get("OperatingSystemFamily") != want_platform.get("OperatingSystemFamily"):
        problems.append("task RuntimePlatform.OperatingSystemFamily differs")
    arch = platform.get("CpuArchitecture")
    if isinstance(arch, dict) and "Ref" in arch:
        arch = params[arch["Ref"]].get("Default")
    if arch != want_platform.get("CpuArchitecture"):
        problems.append(f"task CpuArchitecture (default): template {arch!r}, example {want_platform}")
    for key, role in (("TaskRoleArn", "TaskRole"), ("ExecutionRoleArn", "ExecutionRole")):
        if td.get(key) != {"Fn::GetAtt": [role, "Arn"]}:
            problems.append(f"task {key} is not the template's {role}")

    got_containers = td["ContainerDefinitions"]
    want_containers = want["ContainerDefinitions"]
    got_names = [c.get("Name") for c in got_containers]
    want_names = [c.get("Name") for c in want_containers]
    if got_names != want_names:
        return [*problems, f"containers: template {got_names}, example {want_names}"]
    for got, exp in zip(got_containers, want_containers, strict=True):
        name = got["Name"]
        # Everything but the image (a parameter) and the log configuration (the stack's log group).
        rest_got = {k: v for k, v in got.items() if k not in {"Image", "LogConfiguration"}}
        rest_want = {k: v for k, v in exp.items() if k not in {"Image", "LogConfiguration"}}
        for key in sorted(set(rest_got) | set(rest_want)):
            if rest_got.get(key) != rest_want.get(key):
                problems.append(
                    f"{name}.{key}: template {rest_got.get(key)!r}, example {rest_want.get(key)!r}"
                )
        image = got.get("Image")
        if not (isinstance(image, dict) and params.get(image.get("Ref"), {}).get("Type") == "String"):
            problems.append(f"{name}.Image: not a String parameter: {image!r}")
        log, want_log = got.get("LogConfiguration", {}), exp.get("LogConfiguration", {})
        if log.get("LogDriver") != want_log.get("LogDriver"):
            problems.append(f"{name}.LogConfiguration.LogDriver differs")
        options, want_options = log.get("Options", {}), want_log.get("Options", {})
        if set(options) != set(want_options):
            problems.append(f"{name}: log options {sorted(options)} vs {sorted(want_options)}")
        if options.get("awslogs-stream-prefix") != want_options.get("awslogs-stream-prefix"):
            problems.append(f"{name}: awslogs-stream-prefix differs")
        if options.get("awslogs-group") != {"Ref": "LogGroup"}:
            problems.append(f"{name}: awslogs-group is not the stack's LogGroup")
        if options.get("awslogs-region") != {"Ref": "AWS::Region"}:
            problems.append(f"{name}: awslogs-region is not the stack's region")
    return problems


# ---- cfn-lint ---------------------------------------------------------------------------------


def test_cfn_lint_passes() -> None:
    proc = subprocess.run(_lint_argv(TEMPLATE), capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode & CFN_LINT_FAILED == 0, _report(proc)


def test_cfn_lint_catches_a_broken_template(tmp_path: Path) -> None:
    """Guard against a linter that accepts anything (or is not reading the file)."""
    broken = tmp_path / "broken.yaml"
    text = TEMPLATE.read_text().replace("Condition: HEALTHY", "Condition: READY")
    broken.write_text(text.replace("LaunchType: FARGATE", "LaunchType: FARGATE_SPOT_X"))
    proc = subprocess.run(_lint_argv(broken), capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode & 2, _report(proc)
    assert "'READY'" in proc.stdout
    assert "'FARGATE_SPOT_X'" in proc.stdout


def test_cfn_lint_needs_no_network(netns: NetNS) -> None:
    """cfn-lint ships its resource schemas; it fetches only with --update-specs. In a namespace with
    only `lo` a fetch would fail, so this keeps it offline (CI has the network, users may not)."""
    proc = netns.run(_lint_argv(TEMPLATE), timeout=120)
    assert proc.returncode & CFN_LINT_FAILED == 0, _report(proc)


# ---- the template and the task-definition example -------------------------------------------


def test_template_matches_the_taskdef_example() -> None:
    problems = _drift(_template(), _example())
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("container", "key", "value"),
    [
        (0, "Command", ["--port", "1339", "--tokens", "required"]),
        (0, "HealthCheck", {"Command": ["CMD", "metamock", "healthcheck"], "Interval": 5}),
        (1, "Environment", [{"Name": "AWS_EC2_METADATA_SERVICE_ENDPOINT", "Value": "http://[::1]:1338/"}]),
        (1, "DependsOn", [{"ContainerName": "metamock", "Condition": "START"}]),
        (1, "Essential", False),
    ],
)
def test_drift_is_caught(container: int, key: str, value: Any) -> None:
    """Guard against a cross-check that compares nothing."""
    template = _template()
    template["Resources"]["TaskDefinition"]["Properties"]["ContainerDefinitions"][container][key] = value
    problems = _drift(template, _example())
    assert any(f".{key}:" in p for p in problems), problems


def _statements(role: dict[str, Any]) -> list[dict[str, Any]]:
    policies = role["Properties"].get("Policies", [])
    if isinstance(policies, dict) and "Fn::If" in policies:
        policies = policies["Fn::If"][1]  # the policies when the condition holds
    return [s for p in policies for s in p["PolicyDocument"]["Statement"]]


def _actions(statement: dict[str, Any]) -> list[str]:
    action = statement["Action"]
    return [action] if isinstance(action, str) else list(action)


def test_roles_are_minimal() -> None:
    resources = _template()["Resources"]
    for name in ("ExecutionRole", "TaskRole"):
        trust = resources[name]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
        assert [s["Principal"] for s in trust] == [{"Service": "ecs-tasks.amazonaws.com"}]
        assert all("aws:SourceAccount" in s["Condition"]["StringEquals"] for s in trust), "confused deputy"
        assert "ManagedPolicyArns" not in resources[name]["Properties"]

    execution = _statements(resources["ExecutionRole"])
    actions = {a for s in execution for a in _actions(s)}
    assert actions == {
        "ecr:GetAuthorizationToken",
        "ecr:BatchCheckLayerAvailability",
        "ecr:GetDownloadUrlForLayer",
        "ecr:BatchGetImage",
        "logs:CreateLogStream",
        "logs:PutLogEvents",
    }
    for statement in execution:
        assert statement["Effect"] == "Allow"
        assert not any("*" in a for a in _actions(statement)), statement
        if statement["Resource"] == "*":
            assert _actions(statement) == ["ecr:GetAuthorizationToken"], "only it has no resource scope"
        if any(a.startswith("logs:") for a in _actions(statement)):
            assert statement["Resource"] == {"Fn::GetAtt": ["LogGroup", "Arn"]}

    # The task role: nothing for metamock; ECS Exec's channels only when asked for.
    task_policies = resources["TaskRole"]["Properties"]["Policies"]
    assert task_policies["Fn::If"][0] == "ExecuteCommand"
    assert task_policies["Fn::If"][2] == {"Ref": "AWS::NoValue"}
    assert {a for s in _statements(resources["TaskRole"]) for a in _actions(s)} == {
        "ssmmessages:CreateControlChannel",
        "ssmmessages:CreateDataChannel",
        "ssmmessages:OpenControlChannel",
        "ssmmessages:OpenDataChannel",
    }


def test_service_parameters() -> None:
    template = _template()
    params = template["Parameters"]
    assert {"SidecarImageUri", "AppImageUri", "Cluster", "Subnets", "SecurityGroup"} <= set(params)
    assert params["Subnets"]["Type"] == "List<AWS::EC2::Subnet::Id>"
    assert params["SecurityGroup"]["Type"] == "AWS::EC2::SecurityGroup::Id"
    service = template["Resources"]["Service"]["Properties"]
    assert service["Cluster"] == {"Ref": "Cluster"}
    assert service["LaunchType"] == "FARGATE"
    vpc = service["NetworkConfiguration"]["AwsvpcConfiguration"]
    assert vpc["Subnets"] == {"Ref": "Subnets"}
    assert vpc["SecurityGroups"] == [{"Ref": "SecurityGroup"}]
    # The log group is made by the stack, so no container asks the execution role to create one.
    td = template["Resources"]["TaskDefinition"]["Properties"]
    for container in td["ContainerDefinitions"]:
        assert "awslogs-create-group" not in container["LogConfiguration"]["Options"]


# ---- docs/deploy.md ---------------------------------------------------------------------------


def test_deploy_doc_policies_are_valid_json() -> None:
    """Every ```json block in docs/deploy.md parses, and each IAM policy has the usual shape."""
    blocks = re.findall(r"```json\n(.*?)```", DEPLOY_DOC.read_text(), flags=re.DOTALL)
    assert len(blocks) >= 5
    for block in blocks:
        doc = json.loads(block)
        if "Statement" in doc:
            assert doc["Version"] == "2012-10-17"
            for statement in doc["Statement"]:
                assert statement["Effect"] in {"Allow", "Deny"}
                assert statement["Action"]
                assert "Resource" in statement or "Principal" in statement


def test_deploy_doc_names_real_sidecar_flags() -> None:
    """The `metamock sidecar ...` lines in docs/deploy.md use flags the CLI has (through --help)."""
    proc = subprocess.run(
        [sys.executable, "-m", "metamock", "sidecar", "--help"],
        capture_output=True, text=True, timeout=60, check=False, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    known = set(re.findall(r"--[a-z][a-z-]+", proc.stdout))
    used: set[str] = set()
    # Shell continuation lines joined, so the options on the next lines count too.
    for line in DEPLOY_DOC.read_text().replace("\\\n", " ").splitlines():
        if "metamock sidecar" in line:
            used |= set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", line.split("metamock sidecar", 1)[1]))
    assert used, "docs/deploy.md shows no metamock sidecar command"
    assert used <= known, f"not flags of metamock sidecar: {sorted(used - known)}"
