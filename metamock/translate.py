"""ECS documents in, EC2 metadata tree out. Pure: no I/O, no clock, no globals.

Every value is either taken from the TMDE v4 task/container documents and the role credentials, or
synthesised *stably* from the task ARN (same task -> same value across restarts), and any leaf can be
overridden from the config file. The README's "EC2 path <- ECS source" table documents each one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from metamock.clock import iso_z
from metamock.imds.tree import OCTETS, Leaf
from metamock.settings import ConfigFile
from metamock.sources.base import Credentials, TaskFacts

# (vCPU, GiB, type): the smallest type that holds the task's CPU and memory limits.
INSTANCE_TYPES = (
    (2, 0.5, "t3.nano"), (2, 1, "t3.micro"), (2, 2, "t3.small"), (2, 4, "t3.medium"),
    (2, 8, "t3.large"), (4, 16, "t3.xlarge"), (8, 32, "t3.2xlarge"), (16, 64, "m5.4xlarge"),
    (32, 128, "m5.8xlarge"), (48, 192, "m5.12xlarge"), (64, 256, "m5.16xlarge"),
    (96, 384, "m5.24xlarge"),
)  # fmt: skip

_DIRECTIONS = {
    "east": "e", "west": "w", "north": "n", "south": "s", "central": "c",
    "northeast": "ne", "northwest": "nw", "southeast": "se", "southwest": "sw",
}  # fmt: skip


@dataclass(frozen=True)
class Identity:
    """What the task ARN tells: partition, region, account."""

    partition: str
    region: str
    account: str
    task_arn: str

    @classmethod
    def from_task_arn(cls, arn: str) -> Identity:
        parts = arn.split(":", 5)
        if len(parts) != 6 or parts[0] != "arn" or parts[2] != "ecs" or not parts[3] or not parts[4]:
            raise ValueError(f"not an ECS task ARN: {arn!r}")
        return cls(partition=parts[1], region=parts[3], account=parts[4], task_arn=arn)


def synthetic_id(prefix: str, seed: str, *parts: str) -> str:
    """`prefix-` + 17 hex digits, stable for the same seed and parts."""
    digest = hashlib.sha256("\0".join((seed, *parts)).encode()).hexdigest()
    return f"{prefix}-{digest[:17]}"


def instance_id(task_arn: str) -> str:
    return synthetic_id("i", task_arn)


def instance_type_for(cpu_vcpu: float | None, memory_mib: float | None) -> str:
    """The documented mapping from task limits to an instance type (t3 up to 8 vCPU, then m5)."""
    cpu = cpu_vcpu or 0.0
    mem_gib = (memory_mib or 0.0) / 1024
    for vcpus, gib, name in INSTANCE_TYPES:
        if cpu <= vcpus and mem_gib <= gib:
            return name
    return INSTANCE_TYPES[-1][2]


def services_domain(partition: str) -> str:
    return {
        "aws-cn": "amazonaws.com.cn",
        "aws-iso": "c2s.ic.gov",
        "aws-iso-b": "sc2s.sgov.gov",
    }.get(partition, "amazonaws.com")


def az_id(region: str, zone: str) -> str:
    """A plausible zone id (`usw2-az1`); real ids are mapped per account, so this is synthetic."""
    parts = region.split("-")
    if len(parts) < 3 or not zone.startswith(region):
        return f"{region}-az1"
    code = parts[0] + _DIRECTIONS.get(parts[1], parts[1][:1]) + parts[-1]
    letter = zone[len(region) :][:1] or "a"
    return f"{code}-az{ord(letter) - ord('a') + 1}"


def internal_hostname(ip: str, region: str) -> str:
    suffix = "ec2.internal" if region == "us-east-1" else f"{region}.compute.internal"
    return f"ip-{ip.replace('.', '-')}.{suffix}"


def role_name(creds: Credentials | None, config: ConfigFile) -> str | None:
    if config.role_name:
        return config.role_name
    if creds and creds.role_arn:
        return creds.role_arn.rsplit("/", 1)[-1]
    return None


def credentials_document(creds: Credentials) -> bytes:
    """The JSON EC2 serves under iam/security-credentials/<role> (field order as EC2)."""
    doc = {
        "Code": "Success",
        "LastUpdated": iso_z(creds.last_updated),
        "Type": "AWS-HMAC",
        "AccessKeyId": creds.access_key_id,
        "SecretAccessKey": creds.secret_access_key.reveal(),
        "Token": creds.token.reveal(),
        "Expiration": iso_z(creds.expiration),
    }
    return json.dumps(doc, indent=2).encode()


def _first_network(container: Mapping[str, Any]) -> Mapping[str, Any]:
    networks = container.get("Networks") or [{}]
    first = networks[0]
    return first if isinstance(first, Mapping) else {}


def _task_limits(task: Mapping[str, Any]) -> tuple[float | None, float | None]:
    limits = task.get("Limits") or {}
    cpu = limits.get("CPU")
    mem = limits.get("Memory")
    return (
        float(cpu) if isinstance(cpu, int | float) else None,
        float(mem) if isinstance(mem, int | float) else None,
    )


def interface_tree(
    net: Mapping[str, Any], ident: Identity, index: int, region: str, hostname: str | None
) -> tuple[str, dict[str, Any]]:
    mac = str(net.get("MACAddress") or _synthetic_mac(ident.task_arn, index)).lower()
    ipv4 = [str(a) for a in net.get("IPv4Addresses") or []]
    ipv6 = [str(a).lower() for a in net.get("IPv6Addresses") or []]
    subnet_cidr = net.get("IPv4SubnetCIDRBlock")
    vpc_id = net.get("VPCID") or synthetic_id("vpc", ident.account, ident.region)
    tree: dict[str, Any] = {
        "device-number": str(index),
        "interface-id": synthetic_id("eni", ident.task_arn, mac),
        "local-hostname": hostname or (internal_hostname(ipv4[0], region) if ipv4 else None),
        "local-ipv4s": "\n".join(ipv4) or None,
        "ipv6s": "\n".join(ipv6) or None,
        "mac": mac,
        "network-card-index": "0",
        "owner-id": ident.account,
        "security-group-ids": synthetic_id("sg", ident.task_arn),
        "security-groups": "default",
        "subnet-id": synthetic_id("subnet", ident.account, str(subnet_cidr)),
        "subnet-ipv4-cidr-block": subnet_cidr,
        "subnet-ipv6-cidr-blocks": net.get("IPv6SubnetCIDRBlock"),
        "vpc-id": vpc_id,
        # Fargate does not tell the VPC's CIDR; the subnet's is the best honest approximation.
        "vpc-ipv4-cidr-block": subnet_cidr,
        "vpc-ipv4-cidr-blocks": subnet_cidr,
    }
    return mac, tree


def _synthetic_mac(seed: str, index: int) -> str:
    digest = hashlib.sha256(f"{seed}\0mac\0{index}".encode()).digest()
    return "02:" + ":".join(f"{b:02x}" for b in digest[:5])


def identity_document(meta: Mapping[str, Any], ident: Identity, pending: str) -> dict[str, Any]:
    placement = meta.get("placement") or {}
    return {
        "accountId": ident.account,
        "architecture": "x86_64",
        "availabilityZone": placement.get("availability-zone"),
        "billingProducts": None,
        "devpayProductCodes": None,
        "marketplaceProductCodes": None,
        "imageId": meta.get("ami-id"),
        "instanceId": meta.get("instance-id"),
        "instanceType": meta.get("instance-type"),
        "kernelId": None,
        "pendingTime": pending,
        "privateIp": meta.get("local-ipv4"),
        "ramdiskId": None,
        "region": placement.get("region"),
        "version": "2017-09-30",
    }


def build_tree(
    facts: TaskFacts,
    creds: Credentials | None,
    config: ConfigFile,
    *,
    extra_meta: Mapping[str, Any] | None = None,
    signer: Any = None,
) -> dict[str, Any]:
    """The version root (`meta-data/`, `dynamic/`, `user-data`) for one task.

    `extra_meta` merges scenario documents (spot, events, autoscaling) into meta-data/;
    `signer` (an object with `sign(document: bytes) -> dict[str, bytes]`) renders the identity
    signatures lazily.
    """
    task, container = facts.task, facts.container
    ident = Identity.from_task_arn(str(task.get("TaskARN", "")))
    region = ident.region
    zone = str(task.get("AvailabilityZone") or f"{region}a")
    net = _first_network(container)
    ipv4 = [str(a) for a in net.get("IPv4Addresses") or []]
    local_ipv4 = ipv4[0] if ipv4 else None
    hostname = net.get("PrivateDNSName") or (internal_hostname(local_ipv4, region) if local_ipv4 else None)
    cpu, mem = _task_limits(task)
    rname = role_name(creds, config)

    macs: dict[str, Any] = {}
    primary_mac, primary = interface_tree(net, ident, 0, region, hostname)
    macs[primary_mac] = primary
    for n, extra in enumerate(config.interfaces, start=1):
        mac, iface = interface_tree(
            {"MACAddress": extra["mac"], **{k: v for k, v in extra.items() if k != "mac"}},
            ident,
            n,
            region,
            None,
        )
        macs[mac] = {
            **iface,
            **{k: v for k, v in extra.items() if k in iface and k != "mac" and isinstance(v, str)},
        }

    tags = {str(k): str(v) for k, v in (task.get("TaskTags") or {}).items() if "/" not in str(k) and k}
    tags.update(config.tags)

    meta: dict[str, Any] = {
        "ami-id": synthetic_id("ami", ident.region, "metamock"),
        "ami-launch-index": "0",
        "ami-manifest-path": "(unknown)",
        "block-device-mapping": {"ami": "/dev/xvda", "root": "/dev/xvda"},
        "hostname": hostname,
        "instance-action": "none",
        "instance-id": instance_id(ident.task_arn),
        "instance-life-cycle": "on-demand",
        "instance-type": instance_type_for(cpu, mem),
        "local-hostname": hostname,
        "local-ipv4": local_ipv4,
        "mac": primary_mac,
        "metrics": {"vhostmd": '<?xml version="1.0" encoding="UTF-8"?>'},
        "network": {"interfaces": {"macs": macs}},
        "placement": {
            "availability-zone": zone,
            "availability-zone-id": az_id(region, zone),
            "region": region,
        },
        "profile": "default-hvm",
        "reservation-id": synthetic_id("r", ident.task_arn),
        "security-groups": "default",
        "services": {"domain": services_domain(ident.partition), "partition": ident.partition},
        "tags": {"instance": tags} if tags else None,
    }
    ipv6 = [str(a).lower() for a in net.get("IPv6Addresses") or []]
    if ipv6:
        meta["ipv6"] = ipv6[0]
    # No valid credentials: no iam/ at all, as on an instance without a role (an iam/info that
    # answers while the role path 404s is a listing that does not resolve). The service swaps
    # this tree for one built with creds=None at their expiry.
    if rname and creds is not None:
        meta["iam"] = {
            "info": json.dumps(
                {
                    "Code": "Success",
                    "LastUpdated": iso_z(creds.last_updated),
                    "InstanceProfileArn": (
                        f"arn:{ident.partition}:iam::{ident.account}:instance-profile/{rname}"
                    ),
                    "InstanceProfileId": "AIPA" + synthetic_id("x", ident.account, rname)[2:].upper(),
                },
                indent=2,
            ),
            "security-credentials": {rname: Leaf(credentials_document(creds), expires=creds.expiration)},
        }
    if extra_meta:
        deep_merge(meta, extra_meta)
    _apply_overrides(meta, config.meta_data)

    pending = str(task.get("PullStartedAt") or "")[:19]
    pending = pending + "Z" if pending else iso_z(facts.fetched_at)
    document = json.dumps(identity_document(meta, ident, pending), indent=2).encode()
    identity: dict[str, Any] = {"document": document.decode()}
    if signer is not None:
        for name in ("signature", "pkcs7", "rsa2048"):
            identity[name] = Leaf(_lazy_signature(signer, document, name))
    dynamic: dict[str, Any] = {
        "instance-identity": identity,
        "fws": {"instance-monitoring": "disabled"},
    }
    _apply_overrides(dynamic, config.dynamic)
    root: dict[str, Any] = {"meta-data": meta, "dynamic": dynamic}
    if config.user_data is not None:
        root["user-data"] = Leaf(config.user_data, OCTETS)
    return root


def _lazy_signature(signer: Any, document: bytes, name: str) -> Any:
    def render() -> bytes:
        return bytes(signer.sign(document)[name])

    return render


def deep_merge(target: dict[str, Any], layer: Mapping[str, Any]) -> None:
    """Deep-merge `layer` into `target`, copying every directory (translation edits them in place)."""
    for key, value in layer.items():
        if isinstance(value, Mapping):
            child = target.get(key)
            if not isinstance(child, dict):
                child = target[key] = {}
            deep_merge(child, value)
        else:
            target[key] = value


def _apply_overrides(root: dict[str, Any], overrides: Mapping[str, Any]) -> None:
    """`a/b/c = value` replaces (or adds) that leaf; `false` removes it; tables/arrays become JSON."""
    for path, value in overrides.items():
        *dirs, last = path.split("/")
        node = root
        for part in dirs:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        if value is False:
            node.pop(last, None)
        elif isinstance(value, dict | list):
            node[last] = json.dumps(value, indent=2)
        else:
            node[last] = str(value)
