"""metamock.logs: JSON lines, the levels of metamock's loggers against the libraries', the settings."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator

import pytest

from metamock.errors import SettingsError
from metamock.logs import JsonFormatter, configure
from metamock.settings import LogOptions, log_options
from tests.cli_support import assert_one_line_exit_2, cli_env

PY = sys.executable


def _record(**extra: object) -> logging.LogRecord:
    record = logging.LogRecord("metamock.test", logging.WARNING, __file__, 1, "hello %s", ("world",), None)
    record.__dict__.update(extra)
    return record


def test_a_json_line_has_the_fields_and_the_extras() -> None:
    line = JsonFormatter().format(_record(path="/latest/x", status=404))
    assert "\n" not in line
    obj = json.loads(line)
    assert obj["level"] == "WARNING"
    assert obj["logger"] == "metamock.test"
    assert obj["message"] == "hello world"
    assert obj["time"].endswith("Z") and "T" in obj["time"]
    assert (obj["path"], obj["status"]) == ("/latest/x", 404)
    assert "args" not in obj and "msg" not in obj and "exception" not in obj


def test_a_traceback_stays_inside_the_object() -> None:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        record = logging.LogRecord("metamock", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line
    obj = json.loads(line)
    assert obj["exception"].startswith("Traceback (most recent call last):")
    assert "ValueError: boom\nsecond line" in obj["exception"]


def test_an_unserialisable_extra_becomes_text() -> None:
    obj = json.loads(JsonFormatter().format(_record(thing=object())))
    assert obj["thing"].startswith("<object object")


@pytest.fixture
def restore_levels() -> Iterator[None]:
    names = ("", "metamock", "metamock.access", "pyroute2", "botocore")
    saved = {name: logging.getLogger(name).level for name in names}
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


@pytest.mark.usefixtures("restore_levels")
def test_debug_is_metamocks_only_unless_asked_and_botocore_never() -> None:
    configure(LogOptions(level="debug"))
    assert logging.getLogger("metamock.netfilter").isEnabledFor(logging.DEBUG)
    assert not logging.getLogger("pyroute2").isEnabledFor(logging.DEBUG)
    assert not logging.getLogger("asyncio").isEnabledFor(logging.DEBUG)
    configure(LogOptions(level="debug", libraries=True))
    assert logging.getLogger("pyroute2").isEnabledFor(logging.DEBUG)
    assert not logging.getLogger("botocore").isEnabledFor(logging.DEBUG)
    configure(LogOptions(level="warning"))
    assert not logging.getLogger("metamock.service").isEnabledFor(logging.INFO)
    assert logging.getLogger("metamock.access").isEnabledFor(logging.INFO)  # only on when asked


def test_log_options_flags_beat_the_environment() -> None:
    env = {"METAMOCK_LOG_FORMAT": "json", "METAMOCK_LOG_LEVEL": "warning"}
    assert log_options({}, env) == LogOptions(level="warning", format="json")
    assert log_options({"log_format": "text", "verbose": True}, env) == LogOptions(
        level="debug", format="text"
    )
    assert log_options({}, {}) == LogOptions()
    with pytest.raises(SettingsError, match="METAMOCK_LOG_FORMAT: 'yaml': expected one of text, json"):
        log_options({}, {"METAMOCK_LOG_FORMAT": "yaml"})


def test_a_bad_log_format_is_one_line_and_exit_2() -> None:
    proc = subprocess.run(
        [PY, "-m", "metamock", "status", "--log-format", "xml"],
        env=cli_env(), capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert_one_line_exit_2(proc, "--log-format: 'xml': expected one of text, json")
