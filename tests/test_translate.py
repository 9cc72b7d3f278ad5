"""Translation goldens: ECS documents in, the whole EC2 tree out (as path<TAB>body lines)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from metamock.imds.tree import Tree
from metamock.secrets import Secret
from metamock.settings import ConfigFile
from metamock.sources.base import Credentials, TaskFacts
from metamock.translate import (
    Identity,
    az_id,
    build_tree,
    instance_id,
    instance_type_for,
    internal_hostname,
)
from tests.golden_files import assert_golden
from tests.imds_fixtures import FIXTURES

NOW = 1_900_000_000.0


def render(tree: Tree) -> str:
    lines = []
    for path in tree.paths():
        node = tree.get(path)
        assert node is not None
        body = node.body.decode()
        lines.append(f"{path or '(root)'}\t{node.content_type}\t{json.dumps(body)}")
    return "\n".join(lines) + "\n"


def creds(role_arn: str | None) -> Credentials:
    return Credentials(
        access_key_id="ASIAEXAMPLEEXAMPLE00",
        secret_access_key=Secret("exampleSecret"),
        token=Secret("exampleToken"),
        expiration=NOW + 6 * 3600,
        last_updated=NOW,
        role_arn=role_arn,
    )


def load(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return document


def test_fargate_fixture_golden() -> None:
    task = load("fargate-task.json")
    facts = TaskFacts(task, task["Containers"][0], fetched_at=NOW)
    tree = Tree.build(
        build_tree(facts, creds("arn:aws:iam::111122223333:role/example-task-role"), ConfigFile())
    )
    assert_golden("translate/fargate.tsv", render(tree))


def test_sidecar_container_document_wins_over_task_containers() -> None:
    task = load("fargate-task.json")
    container = load("fargate-container.json")
    tree = Tree.build(build_tree(TaskFacts(task, container, NOW), None, ConfigFile()))
    mac = tree.get("meta-data/mac")
    assert mac is not None and mac.body == b"0a:de:f6:10:51:e5"


def test_ec2_launch_type_task_golden() -> None:
    task = load("ec2-task.json")
    facts = TaskFacts(task, task["Containers"][0], fetched_at=NOW)
    config = ConfigFile.from_mapping(
        {"meta-data": {"instance-type": "m5.large"}, "tags": {"Owner": "platform"}, "user-data": "hello"}
    )
    tree = Tree.build(build_tree(facts, creds("arn:aws:iam::123456789012:role/billing-task"), config))
    assert_golden("translate/ec2.tsv", render(tree))


def test_eks_pod_identity_credentials_take_role_name_from_config() -> None:
    task = load("fargate-task.json")
    facts = TaskFacts(task, task["Containers"][0], fetched_at=NOW)
    config = ConfigFile.from_mapping({"iam": {"role-name": "pod-role"}})
    tree = Tree.build(build_tree(facts, creds(None), config))
    listing = tree.get("meta-data/iam/security-credentials")
    assert listing is not None and listing.body == b"pod-role"
    assert_golden("translate/pod-identity.tsv", render(tree))


def test_without_role_name_and_role_arn_there_is_no_iam() -> None:
    task = load("fargate-task.json")
    tree = Tree.build(build_tree(TaskFacts(task, task["Containers"][0], NOW), creds(None), ConfigFile()))
    assert tree.get("meta-data/iam") is None


def test_instance_id_is_stable_and_distinct() -> None:
    a = "arn:aws:ecs:us-west-2:111122223333:task/default/aaaa"
    b = "arn:aws:ecs:us-west-2:111122223333:task/default/bbbb"
    assert instance_id(a) == instance_id(a)
    assert instance_id(a) != instance_id(b)
    assert re.fullmatch(r"i-[0-9a-f]{17}", instance_id(a))


@pytest.mark.parametrize(
    ("cpu", "mem", "expected"),
    [(0.25, 512, "t3.nano"), (0.5, 1024, "t3.micro"), (1, 2048, "t3.small"), (2, 4096, "t3.medium"),
     (4, 8192, "t3.xlarge"), (8, 30720, "t3.2xlarge"), (16, 122880, "m5.8xlarge"), (None, None, "t3.nano"),
     (192, 1_000_000, "m5.24xlarge")],
)  # fmt: skip
def test_instance_type_mapping(cpu: float | None, mem: float | None, expected: str) -> None:
    assert instance_type_for(cpu, mem) == expected


@pytest.mark.parametrize(
    ("region", "zone", "expected"),
    [("us-west-2", "us-west-2a", "usw2-az1"), ("eu-central-1", "eu-central-1b", "euc1-az2"),
     ("ap-southeast-2", "ap-southeast-2c", "apse2-az3"), ("us-east-1", "us-east-1f", "use1-az6")],
)  # fmt: skip
def test_az_id(region: str, zone: str, expected: str) -> None:
    assert az_id(region, zone) == expected


def test_identity_from_task_arn_and_partitions() -> None:
    ident = Identity.from_task_arn("arn:aws-cn:ecs:cn-north-1:123456789012:task/c/1")
    assert (ident.partition, ident.region, ident.account) == ("aws-cn", "cn-north-1", "123456789012")
    with pytest.raises(ValueError, match="not an ECS task ARN"):
        Identity.from_task_arn("arn:aws:iam::1:role/x")


def test_internal_hostname_for_us_east_1() -> None:
    assert internal_hostname("10.0.0.1", "us-east-1") == "ip-10-0-0-1.ec2.internal"
    assert internal_hostname("10.0.0.1", "eu-west-1") == "ip-10-0-0-1.eu-west-1.compute.internal"


def test_overrides_replace_add_and_remove_leaves() -> None:
    task = load("fargate-task.json")
    config = ConfigFile.from_mapping(
        {"meta-data": {"ami-id": "ami-12345678", "custom/path/leaf": "v", "profile": False,
                       "json-doc": {"a": 1}}}
    )  # fmt: skip
    tree = Tree.build(build_tree(TaskFacts(task, task["Containers"][0], NOW), None, config))
    assert tree.get("meta-data/ami-id").body == b"ami-12345678"  # type: ignore[union-attr]
    assert tree.get("meta-data/custom/path/leaf").body == b"v"  # type: ignore[union-attr]
    assert tree.get("meta-data/profile") is None
    assert json.loads(tree.get("meta-data/json-doc").body) == {"a": 1}  # type: ignore[union-attr]
    doc = json.loads(tree.get("dynamic/instance-identity/document").body)  # type: ignore[union-attr]
    assert doc["imageId"] == "ami-12345678"


def test_identity_document_agrees_with_the_tree() -> None:
    task = load("fargate-task.json")
    tree = Tree.build(build_tree(TaskFacts(task, task["Containers"][0], NOW), None, ConfigFile()))
    doc = json.loads(tree.get("dynamic/instance-identity/document").body)  # type: ignore[union-attr]

    def leaf(path: str) -> str:
        node = tree.get(path)
        assert node is not None
        return node.body.decode()

    assert doc["instanceId"] == leaf("meta-data/instance-id")
    assert doc["region"] == leaf("meta-data/placement/region")
    assert doc["availabilityZone"] == leaf("meta-data/placement/availability-zone")
    assert doc["privateIp"] == leaf("meta-data/local-ipv4")
    assert doc["instanceType"] == leaf("meta-data/instance-type")
    assert doc["accountId"] == "111122223333"
    assert tree.get("dynamic/instance-identity/document").body.startswith(b"{\n  ")  # type: ignore[union-attr]
