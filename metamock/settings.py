"""Settings: flags beat environment, environment beats the config file, the file beats defaults.

Each serve setting is declared once, as a field of `Settings` carrying an `Option` (flag, variable,
parser, help, whether `[server]` may set it); the default is the field's. From that one table come
the argparse arguments (`add_arguments`), the environment lookups and the `[server]` keys
(`Settings.load`), and the flag names a command collects (`flag_names`).

`Settings.load(flags, environ)` is the only place that reads environment values for `serve`;
the client commands (healthcheck, trigger, netfilter, doctor) read the port with `client_port`,
the same parser. Every bad value is a SettingsError naming the setting, before anything listens.
Standard library only: the client commands import this and must start fast.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

from metamock.config import ConfigFile
from metamock.errors import SettingsError
from metamock.scenarios import ScenarioError, validate_config
from metamock.values import (
    choice,
    float_in,
    int_in,
    is_loopback,
    listen_port,
    parse_bool,
    parse_hosts,
    parsed,
    role_arn_value,
    server_port,
    string_items,
    task_metadata_file,
    text,
)

__all__ = [
    "DEFAULT_HOSTS",
    "DEFAULT_PORT",
    "ConfigFile",
    "LogOptions",
    "Option",
    "Settings",
    "add_arguments",
    "add_port_argument",
    "client_port",
    "flag_names",
    "log_options",
    "scenarios_with_flags",
]

DEFAULT_HOSTS = ("127.0.0.1", "::1")
DEFAULT_PORT = 1338
PORT_ENV = "METAMOCK_PORT"
SOURCES = ("auto", "ecs", "local")
TOKEN_MODES = ("optional", "required")

T = TypeVar("T")


# -- the table -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """How a user sets one setting: flag, environment variable, parser, help."""

    flag: str  # "--hop-limit"; its argparse dest ("hop_limit") is the key of Settings.load's flags
    env: str | None  # "METAMOCK_HOP_LIMIT", or None when only the flag (and the file) set it
    parse: Callable[[Any], Any]
    help: str
    in_file: bool = True  # may `[server]` set it (as "hop-limit")?
    kind: Literal["value", "switch", "list"] = "value"  # takes a value / none / repeatable
    metavar: str | None = None

    @property
    def dest(self) -> str:
        return self.flag[2:].replace("-", "_")

    @property
    def file_key(self) -> str:
        return self.flag[2:]


_OPTION = "metamock.option"


def _setting(default: T, option: Option) -> T:
    # A dataclass field whose metadata is the option: the field's type and default are the setting's.
    return field(default=default, metadata={_OPTION: option})


@dataclass(frozen=True)
class Settings:
    # The table: one field per setting, its Option next to its type and default.
    hosts: tuple[str, ...] = _setting(
        DEFAULT_HOSTS,
        Option(
            flag="--host",
            env="METAMOCK_HOST",
            parse=parse_hosts,
            help="listen address, repeatable (env: comma-separated); non-loopback needs --allow-remote",
            kind="list",
        ),
    )
    port: int = _setting(
        DEFAULT_PORT,
        Option(
            flag="--port",
            env=PORT_ENV,
            parse=listen_port,
            help="listen port (0: any free port)",
        ),
    )
    source: str = _setting(
        "auto",
        Option(
            flag="--source",
            env="METAMOCK_SOURCE",
            parse=choice(SOURCES),
            help="auto | ecs | local (auto: ecs when ECS_CONTAINER_METADATA_URI_V4 is set)",
        ),
    )
    tokens: str = _setting(
        "optional",
        Option(
            flag="--tokens",
            env="METAMOCK_TOKENS",
            parse=choice(TOKEN_MODES),
            help="optional | required (required = IMDSv1 off)",
        ),
    )
    hop_limit: int = _setting(
        1,
        Option(
            flag="--hop-limit",
            env="METAMOCK_HOP_LIMIT",
            parse=int_in(1, 64),
            help="IP TTL / hop limit of token responses, 1..64",
        ),
    )
    config_path: Path | None = _setting(  # noqa: RUF009 (_setting returns a dataclasses.field)
        None,
        Option(
            flag="--config",
            env="METAMOCK_CONFIG",
            parse=Path,
            help="TOML file: metadata overrides, user-data, tags, interfaces, scenarios, [server] settings",
            in_file=False,
            metavar="FILE",
        ),
    )
    task_metadata: Mapping[str, Any] | None = _setting(
        None,
        Option(
            flag="--task-metadata",
            env=None,
            parse=task_metadata_file,
            help="local source: a TMDE v4 /task JSON to translate",
            in_file=False,
            metavar="FILE",
        ),
    )
    profile: str | None = _setting(
        None,
        Option(
            flag="--profile",
            env=None,
            parse=text,
            help="local source: credentials from this AWS profile",
            in_file=False,
        ),
    )
    role_arn: str | None = _setting(
        None,
        Option(
            flag="--role-arn",
            env=None,
            parse=role_arn_value,
            help="local source: credentials by AssumeRole of this role",
            in_file=False,
        ),
    )
    netfilter: bool = _setting(
        False,
        Option(
            flag="--netfilter",
            env="METAMOCK_NETFILTER",
            parse=parse_bool,
            help="apply the redirect at start, remove it at exit",
            kind="switch",
        ),
    )
    watch_config: bool = _setting(
        False,
        Option(
            flag="--watch-config",
            env=None,
            parse=parse_bool,
            help="reload the config file when it changes (SIGHUP always reloads)",
            kind="switch",
        ),
    )
    scenario_flags: tuple[str, ...] = _setting(
        (),
        Option(
            flag="--scenario",
            env=None,
            parse=string_items,
            help="start a scenario, repeatable, e.g. spot:delay=30,action=stop or asg:terminate-after=120; "
            "replaces the config's [scenarios] entry of that kind",
            in_file=False,
            kind="list",
            metavar="KIND[:OPTION=VALUE,...]",
        ),
    )
    stop_notice: float = _setting(
        10.0,
        Option(
            flag="--stop-notice",
            env="METAMOCK_STOP_NOTICE",
            parse=float_in(0, 3600),
            help="seconds to serve the stop notice after SIGTERM (0 = off)",
            metavar="SECONDS",
        ),
    )
    allow_remote: bool = _setting(
        False,
        Option(
            flag="--allow-remote",
            env="METAMOCK_ALLOW_REMOTE",
            parse=parse_bool,
            help="allow non-loopback listen addresses (hands the task role to the network!)",
            kind="switch",
        ),
    )
    access_log: bool = _setting(
        False,
        Option(
            flag="--access-log",
            env="METAMOCK_ACCESS_LOG",
            parse=parse_bool,
            help="log one line per request (method, path without query, status, bytes, ms, token sent)",
            kind="switch",
        ),
    )
    config: ConfigFile = field(default_factory=ConfigFile)
    environ: Mapping[str, str] = field(default_factory=dict, repr=False)

    def resolved_source(self) -> str:
        if self.source != "auto":
            return self.source
        return "ecs" if self.environ.get("ECS_CONTAINER_METADATA_URI_V4") else "local"

    @classmethod
    def load(cls, flags: Mapping[str, Any], environ: Mapping[str, str]) -> Settings:
        """Merge flags (by argparse dest; None = not given), METAMOCK_* variables, the config file
        and the defaults."""
        table = options()
        config_path = _pick(table["config_path"], flags, environ, {})
        config = ConfigFile.read(config_path) if config_path is not None else ConfigFile()
        file_keys = {option.file_key for option in table.values() if option.in_file}
        for key in config.server:
            if key not in file_keys:
                raise SettingsError(
                    f"config server.{key}", f"unknown key; expected one of {', '.join(sorted(file_keys))}"
                )
        values: dict[str, Any] = {}
        for name, option in table.items():
            value = _pick(option, flags, environ, config.server)
            values[name] = _default(name) if value is None else value
        if values["scenario_flags"]:
            config = replace(
                config, scenarios=scenarios_with_flags(config.scenarios, values["scenario_flags"])
            )
        for host in values["hosts"]:
            if not is_loopback(host) and not values["allow_remote"]:
                raise SettingsError(
                    "--host",
                    f"{host} is not a loopback address; it would hand the task role to the network. "
                    "Pass --allow-remote if you mean it",
                )
        return cls(**values, config=config, environ=dict(environ))


def options() -> dict[str, Option]:
    """Settings field name -> its Option, in declaration order."""
    return {f.name: f.metadata[_OPTION] for f in dataclasses.fields(Settings) if _OPTION in f.metadata}


def _default(name: str) -> Any:
    return next(f.default for f in dataclasses.fields(Settings) if f.name == name)


def _pick(
    option: Option, flags: Mapping[str, Any], environ: Mapping[str, str], file: Mapping[str, Any]
) -> Any:
    """The parsed value from the first layer that sets it, or None."""
    flag = flags.get(option.dest)
    if flag is not None and flag not in ([], ()):
        return parsed(option.flag, flag, option.parse)
    if option.env and environ.get(option.env) not in (None, ""):
        return parsed(option.env, environ[option.env], option.parse)
    if option.in_file and option.file_key in file:
        return parsed(f"config server.{option.file_key}", file[option.file_key], option.parse)
    return None


def flag_names() -> tuple[str, ...]:
    """The argparse dests of the serve options (what a command hands to Settings.load)."""
    return tuple(option.dest for option in options().values())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The serve options as argparse arguments. Defaults are None (not given): Settings.load
    parses the strings, so a bad value is one line naming the setting, like a bad variable."""
    defaults = {f.name: f.default for f in dataclasses.fields(Settings)}
    for name, option in options().items():
        shown = _shown(defaults[name])
        details = [f"default: {shown}"] if shown else []
        if option.env:
            details.append(f"env: {option.env}")
        text = f"{option.help} [{', '.join(details)}]" if details else option.help
        text = text.replace("%", "%%")
        if option.kind == "switch":
            parser.add_argument(option.flag, dest=option.dest, action="store_const", const=True, help=text)
        elif option.kind == "list":
            parser.add_argument(
                option.flag, dest=option.dest, action="append", metavar=option.metavar, help=text
            )
        else:
            parser.add_argument(option.flag, dest=option.dest, metavar=option.metavar, help=text)


def _shown(default: Any) -> str | None:
    """A default as help shows it; None when there is nothing to show (off, none)."""
    if default is None or isinstance(default, bool) or default == ():
        return None
    if isinstance(default, tuple):
        return " and ".join(str(item) for item in default)
    if isinstance(default, float):
        return f"{default:g}"
    return str(default)


# -- the port, for every command ------------------------------------------------------------------


def add_port_argument(parser: argparse.ArgumentParser, what: str = "the server's port") -> None:
    """`--port` of a client command; parsed by `client_port`, so its error is the same one line."""
    parser.add_argument("--port", metavar="PORT", help=f"{what} (default {PORT_ENV} or {DEFAULT_PORT})")


def client_port(flag: Any, environ: Mapping[str, str]) -> int:
    """The port of the running server a command talks about: `--port`, else METAMOCK_PORT, else
    1338. The same parser and message as `serve` (which alone also takes 0, any free port)."""
    if flag is not None:
        return parsed("--port", flag, server_port)
    value = environ.get(PORT_ENV)
    if value not in (None, ""):
        return parsed(PORT_ENV, value, server_port)
    return DEFAULT_PORT


# -- logging, for every command ------------------------------------------------------------------

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
LOG_FORMAT_ENV = "METAMOCK_LOG_FORMAT"
LOG_LEVEL_ENV = "METAMOCK_LOG_LEVEL"


@dataclass(frozen=True)
class LogOptions:
    """How the process logs (metamock.logs.configure): level of metamock's loggers, text or
    json, and whether the libraries' debug output is wanted too."""

    level: str = "info"
    format: str = "text"
    libraries: bool = False


def add_log_arguments(parser: argparse.ArgumentParser) -> None:
    """`-v`, `--log-level`, `--log-format`, `--debug-libraries`: on every command (main adds them)."""
    add = parser.add_argument
    add("-v", "--verbose", action="store_true", help="debug output of metamock (= --log-level debug)")
    add(
        "--log-level",
        dest="log_level",
        metavar="LEVEL",
        help=f"{' | '.join(LOG_LEVELS)} [default: info (run: warning), env: {LOG_LEVEL_ENV}]",
    )
    add(
        "--log-format",
        dest="log_format",
        metavar="FORMAT",
        help=f"text | json (one object per line) [default: text, env: {LOG_FORMAT_ENV}]",
    )
    add(
        "--debug-libraries",
        dest="debug_libraries",
        action="store_true",
        help="also the libraries' debug output (pyroute2, aiohttp, asyncio; botocore stays at INFO)",
    )


def log_options(
    flags: Mapping[str, Any], environ: Mapping[str, str], default_level: str = "info"
) -> LogOptions:
    """The logging flags (by argparse dest) over METAMOCK_LOG_LEVEL / METAMOCK_LOG_FORMAT, over the
    command's default level."""
    level = _first(flags.get("log_level"), "--log-level", environ, LOG_LEVEL_ENV, choice(LOG_LEVELS))
    fmt = _first(flags.get("log_format"), "--log-format", environ, LOG_FORMAT_ENV, choice(LOG_FORMATS))
    if flags.get("verbose"):
        level = "debug"
    return LogOptions(
        level=level or default_level, format=fmt or "text", libraries=bool(flags.get("debug_libraries"))
    )


def _first(flag: Any, name: str, environ: Mapping[str, str], env: str, parse: Callable[[Any], Any]) -> Any:
    if flag is not None:
        return parsed(name, flag, parse)
    if environ.get(env) not in (None, ""):
        return parsed(env, environ[env], parse)
    return None


# -- `--scenario` ---------------------------------------------------------------------------------


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
