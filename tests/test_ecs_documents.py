"""The TMDE v4 document checks (metamock/ecs/documents.py): what passes cannot make translation
raise, and `serve --source ecs` refuses a malformed task document with one line."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import pytest

from metamock.ecs.documents import container_problem, task_problem, validate_task
from metamock.errors import SettingsError
from metamock.imds.tree import Tree
from metamock.settings import ConfigFile
from metamock.sources.base import TaskFacts
from metamock.translate import build_tree
from tests.conftest import FIXTURES, REPO
from tests.ecs_netns import serve_ecs, start_fake_agent
from tests.fakes.ecs_agent import fargate_env
from tests.netns import NetNS, base_env
from tests.servers import serve_argv

TASK: dict[str, Any] = json.loads((FIXTURES / "fargate-task.json").read_text())
# One value of every JSON type, and the shapes that broke translation or the tree.
VALUES: list[Any] = [None, 0, 7, 1.5, True, "", "x", "a/b", [], [1], ["10.0.0.1"], {}, {"a/b": 1}, {"k": "v"}]
TASK_FIELDS = ("TaskARN", "AvailabilityZone", "Limits", "TaskTags", "PullStartedAt", "Containers")
NETWORK_FIELDS = (
    "IPv4Addresses", "IPv6Addresses", "MACAddress", "IPv4SubnetCIDRBlock", "IPv6SubnetCIDRBlock",
    "VPCID", "PrivateDNSName",
)  # fmt: skip


def translate(task: dict[str, Any], container: dict[str, Any]) -> None:
    Tree.build(build_tree(TaskFacts(task, container, 0.0), None, ConfigFile()))


def variants() -> list[tuple[str, dict[str, Any], Any]]:
    """The fixture with one field read by translation replaced by each value (task, container)."""
    found: list[tuple[str, dict[str, Any], Any]] = []
    for key in TASK_FIELDS:
        for value in VALUES:
            task = copy.deepcopy(TASK)
            task[key] = value
            found.append((f"{key}={value!r}", task, TASK["Containers"][0]))
    for value in [*VALUES, [{"IPv4Addresses": 5}], [5]]:
        container = copy.deepcopy(TASK["Containers"][0])
        container["Networks"] = value
        found.append((f"Networks={value!r}", TASK, container))
    for key in NETWORK_FIELDS:
        for value in VALUES:
            container = copy.deepcopy(TASK["Containers"][0])
            container["Networks"][0][key] = value
            found.append((f"Networks[0].{key}={value!r}", TASK, container))
    return found


def test_what_the_checks_pass_translation_never_raises() -> None:
    passed = refused = 0
    for name, task, container in variants():
        problem = task_problem(task) or container_problem(container)
        # The local source's form: the document's first container is the container document.
        standalone = task_problem(task, standalone=True)
        if standalone is None:
            translate(task, task["Containers"][0])
        if problem is not None:
            assert "\n" not in problem, name
            refused += 1
            continue
        try:
            translate(task, container)
        except Exception as exc:  # any escape is the bug this test is for
            pytest.fail(f"{name} passed the checks but translation raised {exc!r}")
        passed += 1
    assert passed > 50 and refused > 30  # both sides exercised


@pytest.mark.parametrize(
    ("task_arn", "expected"),
    [
        ("arn:aws:ecs:us-west-2:111122223333:task/default/abc", None),
        ("arn:aws-cn:ecs:cn-north-1:111122223333:task/abc", None),
        ("arn:aws:ecs:bad", "TaskARN 'arn:aws:ecs:bad' is not arn:PARTITION:ecs:REGION:ACCOUNT:task/..."),
        ("arn:aws:ecs:us-west-2:1234:task/x", "TaskARN 'arn:aws:ecs:us-west-2:1234:task/x' is not"),
        (42, "TaskARN 42 is not"),
        ("", "task document lacks TaskARN"),
    ],
)
def test_task_arn(task_arn: object, expected: str | None) -> None:
    problem = task_problem({**TASK, "TaskARN": task_arn})
    assert problem == expected if expected is None else problem is not None and problem.startswith(expected)


def test_the_ecs_task_document_need_not_stand_alone() -> None:
    # The ECS source reads the container's document on its own; the zone has a fallback.
    bare = {"TaskARN": TASK["TaskARN"]}
    assert task_problem(bare) is None
    translate(bare, {})
    assert task_problem(bare, standalone=True) == "task document lacks AvailabilityZone, Containers[0]"


def test_validate_task_names_the_setting() -> None:
    assert validate_task(copy.deepcopy(TASK)) == TASK
    with pytest.raises(SettingsError) as info:
        validate_task({**TASK, "Limits": [1]})
    assert str(info.value) == "--task-metadata: Limits is a list, expected an object"
    doc = copy.deepcopy(TASK)
    doc["Containers"][0]["Networks"][0]["MACAddress"] = "zz"
    with pytest.raises(SettingsError, match=r"^--x: Containers\[0\]: Networks\[0\].MACAddress 'zz'"):
        validate_task(doc, setting="--x")


@pytest.mark.root
@pytest.mark.parametrize(
    ("field", "value", "named"),
    [("TaskARN", "arn:aws:ecs:eu-west-1:not-an-account:task/x", "TaskARN"), ("Limits", "big", "Limits")],
)
def test_serve_ecs_refuses_a_malformed_task_document_in_one_line(
    netns: NetNS, tmp_path: Path, field: str, value: str, named: str
) -> None:
    task = copy.deepcopy(TASK)
    task[field] = value
    doc = tmp_path / "task.json"
    doc.write_text(json.dumps(task))
    start_fake_agent(netns, "--task", str(doc))
    began = time.monotonic()
    result = netns.run(
        serve_argv("--stop-notice", "0", source="ecs", host=None, port=1338),
        env=base_env(**fargate_env()), cwd=REPO, timeout=60,
    )  # fmt: skip
    took = time.monotonic() - began
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    line = result.stderr.strip()
    assert line.startswith("metamock serve: ECS task metadata (${ECS_CONTAINER_METADATA_URI_V4}/task): ")
    assert named in line
    assert "Traceback" not in result.stderr
    assert "Unclosed" not in result.stderr
    assert took < 10  # not retried for the ~10 s an unreachable agent gets
    listening = netns.run(["ss", "-Hltn"]).stdout.split("\n")
    assert [row for row in listening if row.strip() and "169.254.170.2:80" not in row] == []


@pytest.mark.root
def test_serve_ecs_with_a_good_document_still_serves(netns: NetNS) -> None:
    start_fake_agent(netns)
    server = serve_ecs(netns)  # fails unless healthy within 30 s
    assert server.stop(timeout=30) == 0
