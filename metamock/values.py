"""Parsers of setting values: text (a flag, a variable) or TOML values in, typed values out.

A parser raises ValueError/TypeError with what is wrong; `parsed` turns that into a SettingsError
naming where the value came from (`--port`, `METAMOCK_PORT`, `config server.port`).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from metamock.errors import SettingsError

TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off", ""}

T = TypeVar("T")


def parsed(setting: str, value: Any, parse: Callable[[Any], T]) -> T:
    try:
        return parse(value)
    except (ValueError, TypeError) as exc:
        raise SettingsError(setting, f"{value!r}: {exc}") from exc


def int_in(low: int, high: int) -> Callable[[Any], int]:
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


listen_port = int_in(0, 65535)  # 0: any free port (tests, `metamock run`)
server_port = int_in(1, 65535)  # the port of a running server: 0 names none


def float_in(low: float, high: float) -> Callable[[Any], float]:
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


def choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in options:
            raise ValueError(f"expected one of {', '.join(options)}")
        return str(value)

    return parse


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise ValueError("expected true or false")


def parse_hosts(value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    hosts = tuple(str(h).strip().strip("[]") for h in items if str(h).strip())
    if not hosts:
        raise ValueError("expected at least one address")
    for host in hosts:
        if host != "localhost":
            ipaddress.ip_address(host)
    return hosts


def is_loopback(host: str) -> bool:
    return host == "localhost" or ipaddress.ip_address(host).is_loopback


def text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("expected a non-empty string")
    return value


def role_arn_value(value: Any) -> str:
    if not str(value).startswith("arn:"):
        raise ValueError("must be an IAM role ARN (arn:aws:iam::<account>:role/<name>)")
    return str(value)


def task_metadata_file(value: Any) -> Mapping[str, Any]:
    """A JSON file holding one object (read at start-up, like the config file)."""
    path = Path(value)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read it: {exc.strerror}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise ValueError("must hold a JSON object (a TMDE v4 /task document)")
    return document


def string_items(value: Any) -> tuple[str, ...]:
    """A repeatable flag's entries, as strings."""
    return tuple(str(item) for item in value)
