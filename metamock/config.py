"""The TOML config file: every section read and checked here, so a typo is refused, never ignored.

Each problem is a SettingsError naming the key (`config iam.rolename: unknown key; ...`), raised
before anything listens (and on reload, before the new file replaces the old one). Values keep
the shapes the translation reads (metamock.translate), nothing more: a key translate would not
read is unknown, a value translate would skip or misread is refused.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

from metamock.errors import SettingsError
from metamock.scenarios import ScenarioError, validate_config

SECTIONS = ("server", "meta-data", "dynamic", "user-data", "tags", "iam", "scenarios", "interfaces")
IAM_KEYS = ("role-name",)

_MAC = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")
# What EC2 accepts for tag keys when tags are in instance metadata; values up to 256 characters.
_TAG_KEY = re.compile(r"[A-Za-z0-9+\-=.,_:@]{1,128}")
_ROLE_NAME = re.compile(r"[\w+=,.@-]{1,64}", re.ASCII)  # IAM's rule for role names


@dataclass(frozen=True)
class ConfigFile:
    """The TOML file: server settings, metadata overrides, user-data, tags, scenarios."""

    path: Path | None = None
    server: Mapping[str, Any] = field(default_factory=dict)  # keys checked by Settings.load
    meta_data: Mapping[str, Any] = field(default_factory=dict)  # path under meta-data/ -> value
    dynamic: Mapping[str, Any] = field(default_factory=dict)  # path under dynamic/ -> value
    user_data: bytes | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    role_name: str | None = None
    scenarios: Mapping[str, Any] = field(default_factory=dict)
    interfaces: tuple[Mapping[str, Any], ...] = ()

    @classmethod
    def read(cls, path: Path) -> ConfigFile:
        """Parse and check the file; any problem is a SettingsError naming `--config` or the key."""
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise SettingsError("--config", f"cannot read {path}: {exc.strerror}") from exc
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise SettingsError("--config", f"{path} is not valid TOML: {exc}") from exc
        return cls.from_mapping(raw, path)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], path: Path | None = None) -> ConfigFile:
        for key in raw:
            if key not in SECTIONS:
                raise SettingsError(
                    f"config {key}", f"unknown section; expected one of {', '.join(SECTIONS)}"
                )
        meta_data = _overrides(raw, "meta-data")
        dynamic = _overrides(raw, "dynamic")
        user_data = raw.get("user-data")
        if user_data is not None and not isinstance(user_data, str):
            raise SettingsError("config user-data", "must be a string")
        return cls(
            path=path,
            server=_table(raw, "server"),
            meta_data=meta_data,
            dynamic=dynamic,
            user_data=user_data.encode() if isinstance(user_data, str) else None,
            tags=_tags(raw),
            role_name=_role_name(raw),
            scenarios=_scenarios(raw),
            interfaces=_interfaces(raw),
        )


def _table(raw: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise SettingsError(f"config {key}", "must be a table")
    return value


def _unknown(section: str, key: str, known: tuple[str, ...] | frozenset[str]) -> SettingsError:
    return SettingsError(
        f"config {section}.{key}", f"unknown key; expected one of {', '.join(sorted(known))}"
    )


# -- [meta-data] and [dynamic] -------------------------------------------------------------------


def _overrides(raw: Mapping[str, Any], section: str) -> dict[str, Any]:
    table = _table(raw, section)
    for key, value in table.items():
        setting = f"config {section}.{key}"
        parts = key.split("/")
        if not key or any(p in {"", ".", ".."} for p in parts):
            raise SettingsError(setting, "paths are 'a/b/c' without empty, '.' or '..' parts")
        if value is True or not (value is False or isinstance(value, str | int | float | dict | list)):
            raise SettingsError(
                setting, "values are strings, numbers, tables/arrays (JSON) or false (remove)"
            )
        if isinstance(value, dict | list):
            _check_json(setting, value)
    return table


def _check_json(setting: str, value: Any) -> None:
    """Tables and arrays are served as JSON: TOML dates and times have no JSON form."""
    if isinstance(value, datetime | date | time):
        raise SettingsError(setting, f"{value!r}: a TOML date/time cannot be served as JSON; quote it")
    if isinstance(value, dict):
        for item in value.values():
            _check_json(setting, item)
    elif isinstance(value, list):
        for item in value:
            _check_json(setting, item)


# -- [tags] and [iam] -----------------------------------------------------------------------------


def _tags(raw: Mapping[str, Any]) -> dict[str, str]:
    tags = _table(raw, "tags")
    for key, value in tags.items():
        if not _TAG_KEY.fullmatch(key) or key in {".", "..", "_index"}:
            raise SettingsError(
                f"config tags.{key}",
                "tag keys are 1..128 letters, digits and + - = . , _ : @ (what EC2 allows in "
                "instance metadata: no '/', no spaces), and not '.', '..' or '_index'",
            )
        if not isinstance(value, str) or len(value) > 256:
            raise SettingsError(f"config tags.{key}", "tag values are strings of at most 256 characters")
    return dict(tags)


def _role_name(raw: Mapping[str, Any]) -> str | None:
    iam = _table(raw, "iam")
    for key in iam:
        if key not in IAM_KEYS:
            raise _unknown("iam", key, IAM_KEYS)
    name = iam.get("role-name")
    if name is not None and (not isinstance(name, str) or not _ROLE_NAME.fullmatch(name)):
        raise SettingsError(
            "config iam.role-name", "must be an IAM role name: 1..64 letters, digits and + = , . @ _ -"
        )
    return name


# -- [scenarios] ----------------------------------------------------------------------------------


def _scenarios(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The `[scenarios]` table, checked against the schema in metamock.scenarios (kept raw)."""
    table = _table(raw, "scenarios")
    try:
        validate_config(table)
    except ScenarioError as exc:
        raise SettingsError(f"config scenarios.{exc.key}", str(exc)) from exc
    return table


# -- [[interfaces]] -------------------------------------------------------------------------------


def _address_list(version: int) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if not isinstance(value, list) or not value:
            raise ValueError(f"must be a non-empty array of IPv{version} addresses")
        for item in value:
            _address(version)(item)

    return check


def _address(version: int) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if not isinstance(value, str):
            raise ValueError(f"must be an IPv{version} address (a string)")
        try:
            parsed = ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an IPv{version} address") from None
        if parsed.version != version:
            raise ValueError(f"{value!r} is not an IPv{version} address")

    return check


def _network(version: int) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if not isinstance(value, str):
            raise ValueError(f"must be an IPv{version} CIDR block (a string)")
        try:
            parsed = ipaddress.ip_network(value)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not an IPv{version} CIDR block ({exc})") from None
        if parsed.version != version or "/" not in value:
            raise ValueError(f"{value!r} is not an IPv{version} CIDR block like 10.0.1.0/24")

    return check


def _lines(check: Callable[[Any], None]) -> Callable[[Any], None]:
    """An EC2 leaf that lists several values, one per line."""

    def check_lines(value: Any) -> None:
        if not isinstance(value, str) or not value:
            raise ValueError("must be a non-empty string (several values: one per line)")
        for line in value.split("\n"):
            check(line)

    return check_lines


def _text(pattern: str, what: str) -> Callable[[Any], None]:
    compiled = re.compile(pattern)

    def check(value: Any) -> None:
        if not isinstance(value, str) or not compiled.fullmatch(value):
            raise ValueError(f"{value!r}: expected {what}")

    return check


def _id(prefix: str) -> Callable[[Any], None]:
    return _text(rf"{prefix}-[0-9a-f]{{8,17}}", f"an id like {prefix}-0123456789abcdef0")


_ANY_TEXT = _text(r"[^\n]+", "a non-empty one-line string")

# TMDE-style network fields, as in the task document (translate.interface_tree reads these).
_TMDE_KEYS: dict[str, Callable[[Any], None]] = {
    "IPv4Addresses": _address_list(4),
    "IPv6Addresses": _address_list(6),
    "IPv4SubnetCIDRBlock": _network(4),
    "IPv6SubnetCIDRBlock": _network(6),
    "VPCID": _id("vpc"),
}
# EC2 leaf names that an interface already has: a string value replaces the leaf. These are the
# leaves translate.interface_tree builds (a test keeps the two lists equal), except `mac`.
LEAF_KEYS: dict[str, Callable[[Any], None]] = {
    "device-number": _text(r"[0-9]{1,3}", "a number (as a string)"),
    "interface-id": _id("eni"),
    "local-hostname": _ANY_TEXT,
    "local-ipv4s": _lines(_address(4)),
    "ipv6s": _lines(_address(6)),
    "network-card-index": _text(r"[0-9]{1,3}", "a number (as a string)"),
    "owner-id": _text(r"[0-9]{12}", "a 12-digit account id"),
    "security-group-ids": _lines(_id("sg")),
    "security-groups": _lines(_ANY_TEXT),
    "subnet-id": _id("subnet"),
    "subnet-ipv4-cidr-block": _network(4),
    "subnet-ipv6-cidr-blocks": _lines(_network(6)),
    "vpc-id": _id("vpc"),
    "vpc-ipv4-cidr-block": _network(4),
    "vpc-ipv4-cidr-blocks": _lines(_network(4)),
}
INTERFACE_KEYS = frozenset({"mac", *_TMDE_KEYS, *LEAF_KEYS})


def _interfaces(raw: Mapping[str, Any]) -> tuple[dict[str, Any], ...]:
    interfaces = raw.get("interfaces", [])
    if not isinstance(interfaces, list) or not all(isinstance(i, dict) for i in interfaces):
        raise SettingsError("config interfaces", "must be an array of tables ([[interfaces]])")
    seen: dict[str, int] = {}
    for n, iface in enumerate(interfaces):
        where = f"interfaces[{n}]"
        mac = iface.get("mac")
        if not isinstance(mac, str):
            raise SettingsError(f"config {where}.mac", "each extra interface needs a mac")
        if not _MAC.fullmatch(mac):
            raise SettingsError(f"config {where}.mac", f"{mac!r}: expected a MAC like 0a:00:00:00:00:02")
        if mac.lower() in seen:
            raise SettingsError(f"config {where}.mac", f"{mac!r} is already interfaces[{seen[mac.lower()]}]")
        seen[mac.lower()] = n
        for key, value in iface.items():
            if key == "mac":
                continue
            check = _TMDE_KEYS.get(key) or LEAF_KEYS.get(key)
            if check is None:
                raise _unknown(where, key, INTERFACE_KEYS)
            try:
                check(value)
            except ValueError as exc:
                raise SettingsError(f"config {where}.{key}", str(exc)) from None
    return tuple(interfaces)
