"""The shape of the TMDE v4 documents that translation relies on, checked at the boundary.

Both sources hand their documents to `translate.build_tree`, which reads them without checks of
its own (it is pure and trusts its input). Everything it reads is checked here, with the type it
needs, so a document that passes cannot make translation raise: a malformed `TaskARN` from the
ECS agent is then one line naming the field, not a `ValueError` traceback from the middle of a
tree build. Fields translation does not read are not checked: ECS adds new ones over time.

`task_problem` / `container_problem` say what is wrong (None when nothing is); `validate_task`
is the local source's form, for a document the user gave (`--task-metadata`), which must stand
alone: its first container is the container document, and it names its Availability Zone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from metamock.errors import SettingsError

TASK_ARN = re.compile(r"^arn:(aws[a-z-]*):ecs:([a-z0-9-]+):(\d{12}):task/\S+$")
_MAC = re.compile(r"^[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}$")
# Network fields translation serves as leaves (a list or an object there would not serve).
_NETWORK_TEXT = ("IPv4SubnetCIDRBlock", "IPv6SubnetCIDRBlock", "VPCID", "PrivateDNSName")


def task_problem(doc: object, *, standalone: bool = False) -> str | None:
    """What makes `doc` unusable as a task document, in one phrase; None when it is usable.

    `standalone`: the document is all there is (the local source), so it must also hold the
    container (`Containers[0]` with `Networks`) and name its `AvailabilityZone`.
    """
    if not isinstance(doc, dict):
        return "not a TMDE v4 task document (a JSON object)"
    required = ("TaskARN", "AvailabilityZone") if standalone else ("TaskARN",)
    missing = [key for key in required if not doc.get(key)]
    containers = doc.get("Containers")
    if standalone:
        if not isinstance(containers, list) or not containers or not isinstance(containers[0], dict):
            missing.append("Containers[0]")
        elif not isinstance(containers[0].get("Networks"), list) or not containers[0]["Networks"]:
            missing.append("Containers[0].Networks")
    if missing:
        return f"task document lacks {', '.join(missing)}"
    arn = doc["TaskARN"]
    if not isinstance(arn, str) or not TASK_ARN.match(arn):
        return f"TaskARN {_short(arn)} is not arn:PARTITION:ecs:REGION:ACCOUNT:task/..."
    for key, kind, expected in (
        ("AvailabilityZone", str, "a string"),
        ("Limits", dict, "an object"),
        ("TaskTags", dict, "an object"),
    ):
        if doc.get(key) and not isinstance(doc[key], kind):
            return f"{key} is {_kind(doc[key])}, expected {expected}"
    if standalone:
        problem = container_problem(doc["Containers"][0])
        if problem is not None:
            return f"Containers[0]: {problem}"
    return None


def container_problem(doc: object) -> str | None:
    """What makes `doc` unusable as this container's document; None when it is usable."""
    if not isinstance(doc, dict):
        return "not a TMDE v4 container document (a JSON object)"
    networks = doc.get("Networks")
    if not networks:
        return None  # translation synthesises the interface
    if not isinstance(networks, list):
        return f"Networks is {_kind(networks)}, expected a list"
    first = networks[0]
    if not isinstance(first, dict):
        return None  # translation ignores it and synthesises the interface
    for key in ("IPv4Addresses", "IPv6Addresses"):
        addresses = first.get(key)
        if addresses and (not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses)):
            return f"Networks[0].{key} is {_kind(addresses)}, expected a list of strings"
    mac = first.get("MACAddress")
    if mac and (not isinstance(mac, str) or not _MAC.match(mac)):
        return f"Networks[0].MACAddress {_short(mac)} is not a MAC address"
    for key in _NETWORK_TEXT:
        value = first.get(key)
        if value is not None and not isinstance(value, str):
            return f"Networks[0].{key} is {_kind(value)}, expected a string"
    return None


def validate_task(doc: object, *, setting: str = "--task-metadata") -> dict[str, Any]:
    """A standalone task document (the local source's), or SettingsError naming `setting`."""
    problem = task_problem(doc, standalone=True)
    if problem is not None:
        raise SettingsError(setting, problem)
    assert isinstance(doc, dict)
    return doc


def _kind(value: object) -> str:
    """The JSON type of `value`, as a message names it."""
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    return "a number" if isinstance(value, int | float) else "null"


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
