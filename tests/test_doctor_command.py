"""The `metamock doctor` command: flags, exit codes, colour only on a TTY."""

from __future__ import annotations

import io
import json

import pytest

from metamock.cli import main
from tests.servers import free_port


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_json_and_exit_code_without_a_server(capsys: pytest.CaptureFixture[str]) -> None:
    port = str(free_port())
    assert main(["doctor", "--json", "--offline", "--port", port]) == 1
    checks = {c["name"]: c for c in json.loads(capsys.readouterr().out)["checks"]}
    assert checks["server"]["status"] == "fail"
    assert checks["server"]["detail"] == f"nothing listens on 127.0.0.1:{port}"
    assert checks["sts"]["status"] == "skip"


def test_port_from_metamock_port(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    port = str(free_port())
    monkeypatch.setenv("METAMOCK_PORT", port)
    main(["doctor", "--json", "--offline"])
    assert f"127.0.0.1:{port}" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "env"), [(["--port", "0"], None), ([], "not-a-port")])
def test_bad_port_is_a_settings_error(
    argv: list[str], env: str | None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if env:
        monkeypatch.setenv("METAMOCK_PORT", env)
    assert main(["doctor", "--offline", *argv]) == 2
    assert "port" in capsys.readouterr().err.lower()


def test_colour_on_a_tty_unless_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    tty = Tty()
    monkeypatch.setattr("sys.stdout", tty)
    main(["doctor", "--offline", "--port", str(free_port())])
    assert "\033[31;1mfail\033[0m" in tty.getvalue()
    monkeypatch.setenv("NO_COLOR", "1")
    tty = Tty()
    monkeypatch.setattr("sys.stdout", tty)
    main(["doctor", "--offline", "--port", str(free_port())])
    assert "\033[" not in tty.getvalue()
