"""Settings: flags beat environment, environment beats the config file, the file beats defaults.

`Settings.load(flags, environ)` is the only place that reads environment values; everything else
gets a Settings object. Every bad value is a SettingsError naming the setting, before anything listens.
"""

from __future__ import annotations

import ipaddress
import json
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from metamock.errors import SettingsError
from metamock.scenarios import ScenarioError, validate_config

DEFAULT_HOSTS = ("127.0.0.1", "::1")
DEFAULT_PORT = 1338
SOURCES = ("auto", "ecs", "local")
TOKEN_MODES = ("optional", "required")
TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off", ""}

T = TypeVar("T")


@dataclass(frozen=True)
class ConfigFile:
    """The TOML file: server settings, metadata overrides, user-data, tags, scenarios."""

    path: Path | None = None
    server: Mapping[str, Any] = field(default_factory=dict)
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
        known = {
            "server",
            "meta-data",
            "dynamic",
            "user-data",
            "tags",
            "iam",
            "scenarios",
            "interfaces",
        }
        for key in raw:
            if key not in known:
                raise SettingsError(f"config {key}", f"unknown section; expected one of {sorted(known)}")
        server = _table(raw, "server")
        meta_data = _table(raw, "meta-data")
        dynamic = _table(raw, "dynamic")
        for section, table in (("meta-data", meta_data), ("dynamic", dynamic)):
            for key, value in table.items():
                _check_override(f"config {section}.{key}", key, value)
        user_data_raw = raw.get("user-data")
        if user_data_raw is not None and not isinstance(user_data_raw, str):
            raise SettingsError("config user-data", "must be a string")
        tags = _table(raw, "tags")
        for key, value in tags.items():
            if not isinstance(value, str) or "/" in key or not key:
                raise SettingsError(
                    f"config tags.{key}", "tag keys must be non-empty without '/', values strings"
                )
        iam = _table(raw, "iam")
        role_name = iam.get("role-name")
        if role_name is not None and (not isinstance(role_name, str) or not role_name or "/" in role_name):
            raise SettingsError("config iam.role-name", "must be a non-empty name without '/'")
        interfaces = raw.get("interfaces", [])
        if not isinstance(interfaces, list) or not all(isinstance(i, dict) for i in interfaces):
            raise SettingsError("config interfaces", "must be an array of tables ([[interfaces]])")
        for n, iface in enumerate(interfaces):
            if not isinstance(iface.get("mac"), str):
                raise SettingsError(f"config interfaces[{n}].mac", "each extra interface needs a mac")
        return cls(
            path=path,
            server=server,
            meta_data=meta_data,
            dynamic=dynamic,
            user_data=user_data_raw.encode() if isinstance(user_data_raw, str) else None,
            tags={str(k): str(v) for k, v in tags.items()},
            role_name=role_name,
            scenarios=_scenarios(raw),
            interfaces=tuple(interfaces),
        )


def _scenarios(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The `[scenarios]` table, checked against the schema in metamock.scenarios (kept raw)."""
    table = _table(raw, "scenarios")
    try:
        validate_config(table)
    except ScenarioError as exc:
        raise SettingsError(f"config scenarios.{exc.key}", str(exc)) from exc
    return table


def scenarios_with_flags(table: Mapping[str, Any], flags: Sequence[str]) -> dict[str, Any]:
    """`--scenario KIND[:option=value,...]` entries over the file's `[scenarios]` (a flag replaces
    the file's entry of the same kind; repeated `maintenance` flags add events)."""
    merged = dict(table)
    flagged_maintenance: list[dict[str, Any]] = []
    for item in flags:
        kind, _, rest = item.partition(":")
        options: dict[str, Any] = {}
        for pair in filter(None, rest.split(",")):
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise SettingsError("--scenario", f"{item!r}: options are key=value, comma-separated")
            options[key.strip()] = _scalar(value.strip())
        if kind == "maintenance":
            flagged_maintenance.append(options)
        else:
            merged[kind] = options
    if flagged_maintenance:
        merged["maintenance"] = flagged_maintenance
    try:
        validate_config(merged)
    except ScenarioError as exc:
        raise SettingsError("--scenario", f"{exc.key}: {exc}") from exc
    return merged


def _scalar(value: str) -> Any:
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        return value


def _table(raw: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise SettingsError(f"config {key}", "must be a table")
    return value


def _check_override(setting: str, key: str, value: Any) -> None:
    parts = key.split("/")
    if not key or any(p in {"", ".", ".."} for p in parts):
        raise SettingsError(setting, "paths are 'a/b/c' without empty, '.' or '..' parts")
    if value is False or isinstance(value, str | int | float | dict | list):
        return
    raise SettingsError(setting, "values are strings, numbers, tables/arrays (JSON) or false (remove)")


@dataclass(frozen=True)
class Settings:
    hosts: tuple[str, ...] = DEFAULT_HOSTS
    port: int = DEFAULT_PORT
    source: str = "auto"
    tokens: str = "optional"
    hop_limit: int = 1
    config_path: Path | None = None
    task_metadata: Mapping[str, Any] | None = None
    profile: str | None = None
    role_arn: str | None = None
    netfilter: bool = False
    watch_config: bool = False
    stop_notice: float = 10.0
    allow_remote: bool = False
    config: ConfigFile = field(default_factory=ConfigFile)
    environ: Mapping[str, str] = field(default_factory=dict, repr=False)

    def resolved_source(self) -> str:
        if self.source != "auto":
            return self.source
        return "ecs" if self.environ.get("ECS_CONTAINER_METADATA_URI_V4") else "local"

    @classmethod
    def load(cls, flags: Mapping[str, Any], environ: Mapping[str, str]) -> Settings:
        """Merge flags (None = not given), METAMOCK_* variables, the config file and defaults."""
        config_value = flags.get("config") or environ.get("METAMOCK_CONFIG") or None
        config = ConfigFile()
        if config_value:
            config = ConfigFile.read(Path(config_value))
        if flags.get("scenario"):
            config = replace(config, scenarios=scenarios_with_flags(config.scenarios, flags["scenario"]))
        layers = _Layers(flags, environ, config.server)

        hosts_raw = layers.pick("host", "METAMOCK_HOST", _parse_hosts)
        hosts = hosts_raw if hosts_raw is not None else DEFAULT_HOSTS
        allow_remote = bool(layers.pick("allow_remote", "METAMOCK_ALLOW_REMOTE", _parse_bool) or False)
        for host in hosts:
            if not _is_loopback(host) and not allow_remote:
                raise SettingsError(
                    "--host",
                    f"{host} is not a loopback address; it would hand the task role to the network. "
                    "Pass --allow-remote if you mean it",
                )
        port = layers.pick("port", "METAMOCK_PORT", _int_in(0, 65535))
        source = layers.pick("source", "METAMOCK_SOURCE", _choice(SOURCES))
        tokens = layers.pick("tokens", "METAMOCK_TOKENS", _choice(TOKEN_MODES))
        hop_limit = layers.pick("hop_limit", "METAMOCK_HOP_LIMIT", _int_in(1, 64))
        netfilter = layers.pick("netfilter", "METAMOCK_NETFILTER", _parse_bool)
        stop_notice = layers.pick("stop_notice", "METAMOCK_STOP_NOTICE", _float_in(0, 3600))
        watch = layers.pick("watch_config", None, _parse_bool)

        task_metadata = None
        if flags.get("task_metadata"):
            task_metadata = _read_json("--task-metadata", Path(flags["task_metadata"]))
        role_arn = flags.get("role_arn")
        if role_arn is not None and not str(role_arn).startswith("arn:"):
            raise SettingsError("--role-arn", "must be an IAM role ARN (arn:aws:iam::<account>:role/<name>)")
        return cls(
            hosts=tuple(hosts),
            port=DEFAULT_PORT if port is None else port,
            source=source or "auto",
            tokens=tokens or "optional",
            hop_limit=1 if hop_limit is None else hop_limit,
            config_path=Path(config_value) if config_value else None,
            task_metadata=task_metadata,
            profile=flags.get("profile"),
            role_arn=role_arn,
            netfilter=bool(netfilter),
            watch_config=bool(watch),
            stop_notice=10.0 if stop_notice is None else stop_notice,
            allow_remote=allow_remote,
            config=config,
            environ=dict(environ),
        )


class _Layers:
    def __init__(self, flags: Mapping[str, Any], environ: Mapping[str, str], file: Mapping[str, Any]) -> None:
        self.flags, self.environ, self.file = flags, environ, file
        known = {
            "host",
            "port",
            "source",
            "tokens",
            "hop-limit",
            "netfilter",
            "stop-notice",
            "allow-remote",
            "watch-config",
        }
        for key in file:
            if key not in known:
                raise SettingsError(
                    f"config server.{key}", f"unknown setting; expected one of {sorted(known)}"
                )

    def pick(self, name: str, env: str | None, parse: Callable[[Any], T]) -> T | None:
        flag = self.flags.get(name)
        if flag is not None and flag != []:
            return _parsed(f"--{name.replace('_', '-')}", flag, parse)
        if env and self.environ.get(env) not in (None, ""):
            return _parsed(env, self.environ[env], parse)
        key = name.replace("_", "-")
        if key in self.file:
            return _parsed(f"config server.{key}", self.file[key], parse)
        return None


def _parsed(setting: str, value: Any, parse: Callable[[Any], T]) -> T:
    try:
        return parse(value)
    except (ValueError, TypeError) as exc:
        raise SettingsError(setting, f"{value!r}: {exc}") from exc


def _int_in(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"expected an integer {low}..{high}")
        try:
            number = int(value)
        except (ValueError, TypeError):
            raise ValueError(f"expected an integer {low}..{high}") from None
        if not low <= number <= high:
            raise ValueError(f"out of range {low}..{high}")
        return number

    return parse


def _float_in(low: float, high: float) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        if isinstance(value, bool):
            raise ValueError("expected a number of seconds")
        try:
            number = float(value)
        except (ValueError, TypeError):
            raise ValueError("expected a number of seconds") from None
        if not low <= number <= high:
            raise ValueError(f"out of range {low:g}..{high:g}")
        return number

    return parse


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in options:
            raise ValueError(f"expected one of {', '.join(options)}")
        return str(value)

    return parse


def _parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise ValueError("expected true or false")


def _parse_hosts(value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    hosts = tuple(str(h).strip().strip("[]") for h in items if str(h).strip())
    if not hosts:
        raise ValueError("expected at least one address")
    for host in hosts:
        if host != "localhost":
            ipaddress.ip_address(host)
    return hosts


def _is_loopback(host: str) -> bool:
    return host == "localhost" or ipaddress.ip_address(host).is_loopback


def _read_json(setting: str, path: Path) -> Mapping[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError(setting, f"cannot read {path}: {exc.strerror}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SettingsError(setting, f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise SettingsError(setting, f"{path} must hold a JSON object (a TMDE v4 /task document)")
    return value
