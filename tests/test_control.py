"""The control socket: permissions, trigger/clear/status, `metamock trigger`, bad input, life cycle."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from metamock import cli
from metamock.control import ControlServer, choose_path
from metamock.control_socket import call, find_socket, private_dir, socket_candidates
from metamock.errors import MetamockError
from tests.conftest import require_root
from tests.scenarios_support import fetch, free_port, get, scenario_service, serve_process


async def _call(path: Path, request: dict[str, object]) -> dict[str, object]:
    # The client blocks; the server runs on this loop, so the client runs in a thread.
    return await asyncio.to_thread(call, path, request)


async def _cli(*argv: str) -> int:
    return await asyncio.to_thread(cli.main, ["trigger", *argv])


async def test_socket_is_0600_and_removed_at_stop(tmp_path: Path) -> None:
    async with scenario_service(tmp_path) as service:
        assert service.control is not None
        info = service.control.path.stat()
        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o600
        assert info.st_uid == os.geteuid()
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".control")] == []
    assert not (tmp_path / "control.sock").exists()


async def test_trigger_clear_and_status_through_the_socket(tmp_path: Path) -> None:
    async with scenario_service(tmp_path) as service, aiohttp.ClientSession() as s:
        path = service.control.path  # type: ignore[union-attr]
        answer = await _call(
            path, {"op": "trigger", "scenario": "spot", "options": {"action": "stop", "in": 60}}
        )
        assert answer["ok"] is True
        assert answer["triggered"]["action"] == "stop"  # type: ignore[index]
        status, body = await fetch(s, service.port, "meta-data/spot/instance-action")
        assert status == 200
        assert json.loads(body)["action"] == "stop"
        await _call(path, {"op": "trigger", "scenario": "rebalance", "options": {}})
        kinds = [item["kind"] for item in (await _call(path, {"op": "status"}))["scenarios"]]  # type: ignore[attr-defined]
        assert sorted(kinds) == ["rebalance", "spot"]

        answer = await _call(path, {"op": "clear", "scenario": "spot"})
        assert answer["cleared"] == 1
        assert (await fetch(s, service.port, "meta-data/spot/instance-action"))[0] == 404
        assert (await fetch(s, service.port, "meta-data/events/recommendations/rebalance"))[0] == 200
        assert (await _call(path, {"op": "clear"}))["cleared"] == 1
        assert "events/" not in (await fetch(s, service.port, "meta-data/"))[1]


async def test_metamock_trigger_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with scenario_service(tmp_path) as service, aiohttp.ClientSession() as s:
        sock = str(service.control.path)  # type: ignore[union-attr]
        assert await _cli("spot", "--socket", sock, "--action", "hibernate", "--in", "30") == 0
        printed = json.loads(capsys.readouterr().out)
        assert printed["action"] == "hibernate"
        assert (
            await _cli("maintenance", "--socket", sock, "--code", "instance-stop", "--not-before", "600") == 0
        )
        assert await _cli("asg-terminate", "--socket", sock, "--delay", "3600") == 0
        assert await _cli("rebalance", "--socket", sock, "--at", "2020-01-01T00:00:00Z") == 0
        capsys.readouterr()
        events = json.loads((await fetch(s, service.port, "meta-data/events/maintenance/scheduled"))[1])
        assert events[0]["Code"] == "instance-stop"
        # asg-terminate in an hour: a member of the group until then
        assert await fetch(s, service.port, "meta-data/autoscaling/target-lifecycle-state") == (
            200,
            "InService",
        )
        assert await _cli("--status", "--socket", sock) == 0
        assert len(json.loads(capsys.readouterr().out)) == 4
        assert await _cli("--clear", "--socket", sock) == 0
        assert capsys.readouterr().out == "cleared 4 scenario(s)\n"
        assert service.scenario_status() == []


async def test_trigger_finds_the_socket_from_the_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    async with scenario_service(tmp_path) as service:
        # A second socket at the default place for this port, as `serve` creates it.
        default = choose_path(service.port, {"XDG_RUNTIME_DIR": str(tmp_path)})
        extra = ControlServer(default, lambda request: {"ok": True, "triggered": {"via": "default"}})
        await extra.start()
        try:
            assert await _cli("rebalance", "--port", str(service.port)) == 0
        finally:
            await extra.close()


async def test_bad_cli_usage_exits_2_and_no_server_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await _cli("rebalance", "--action", "stop", "--socket", str(tmp_path / "x")) == 2
    assert "--action" in capsys.readouterr().err
    assert await _cli("--socket", str(tmp_path / "x")) == 2
    assert await _cli("spot", "--socket", str(tmp_path / "none.sock")) == 1
    assert "cannot talk to the server" in capsys.readouterr().err
    assert await _cli("spot", "--port", "9") == 1
    assert "no metamock control socket for port 9" in capsys.readouterr().err


async def test_bad_requests_are_answered_and_change_nothing(tmp_path: Path) -> None:
    async with scenario_service(tmp_path) as service:
        path = service.control.path  # type: ignore[union-attr]
        reader, writer = await asyncio.open_unix_connection(str(path))
        answers = []
        for line in (
            b"not json\n",
            b"[1, 2]\n",
            b'{"op": "explode"}\n',
            b'{"op": "trigger", "scenario": "meteor"}\n',
            b'{"op": "trigger", "scenario": "spot", "options": {"action": "melt"}}\n',
            b'{"op": "trigger", "scenario": "spot", "options": {"delay": -5}}\n',
            b'{"op": "trigger", "scenario": "spot", "options": []}\n',
        ):
            writer.write(line)
            answers.append(json.loads(await reader.readline()))
        writer.close()
        await writer.wait_closed()
        assert [a["ok"] for a in answers] == [False] * 7
        assert answers[4]["error"].startswith("--action:")
        assert service.scenario_status() == []
        # An overlong line is refused, and the server keeps serving.
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(b"x" * 100_000 + b"\n")
        assert json.loads(await reader.readline())["ok"] is False
        writer.close()
        assert (await _call(path, {"op": "status"}))["ok"] is True


async def test_stale_socket_is_replaced_and_a_live_one_is_not(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: a crashed server's leftover
    first = ControlServer(path, lambda request: {"ok": True})
    await first.start()
    try:
        with pytest.raises(MetamockError, match="in use"):
            await ControlServer(path, lambda request: {"ok": True}).start()
        assert (await _call(path, {"op": "status"}))["ok"] is True
    finally:
        await first.close()
    assert not path.exists()


def test_default_paths_and_private_directories(tmp_path: Path) -> None:
    paths = socket_candidates(1338, {"XDG_RUNTIME_DIR": "/run/user/1000"}, uid=1000, netns="4-4026531840")
    assert [str(p) for p in paths] == [
        "/run/metamock/control-1338-net4-4026531840.sock",
        "/run/user/1000/metamock/control-1338-net4-4026531840.sock",
        "/tmp/metamock-1000/control-1338-net4-4026531840.sock",
    ]
    assert [str(p) for p in socket_candidates(80, {}, uid=0, netns="")][
        -1
    ] == "/tmp/metamock-0/control-80.sock"
    info = Path("/proc/self/ns/net").stat()
    assert socket_candidates(80, {})[0].name == f"control-80-net{info.st_dev}-{info.st_ino}.sock"
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    assert not private_dir(shared)  # anyone could swap the socket: refused
    fresh = tmp_path / "fresh"
    assert private_dir(fresh)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700


@pytest.mark.root
async def test_another_user_cannot_connect(tmp_path: Path) -> None:
    require_root()
    tmp_path.chmod(0o755)  # let the other user reach the directory: only the socket's mode stops it
    async with scenario_service(tmp_path) as service:
        path = service.control.path  # type: ignore[union-attr]
        probe = (
            "import socket, sys\n"
            "s = socket.socket(socket.AF_UNIX)\n"
            "try:\n    s.connect(sys.argv[1])\nexcept PermissionError:\n    sys.exit(13)\n"
            "sys.exit(0)\n"
        )
        argv = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
        done = await asyncio.to_thread(
            subprocess.run, [*argv, sys.executable, "-c", probe, str(path)], capture_output=True, timeout=30
        )
        assert done.returncode == 13, done.stderr
        assert service.scenario_status() == []


def test_trigger_reaches_a_real_serve_by_its_port() -> None:
    """End to end: `metamock serve` makes its socket at the default place; `metamock trigger --port`
    finds it there; the notice is served at once."""
    port = free_port()
    with serve_process(port, "--stop-notice", "0") as proc:
        argv = [sys.executable, "-m", "metamock", "trigger"]
        done = subprocess.run(
            [*argv, "spot", "--port", str(port), "--action", "stop", "--in", "60"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        status, body = get(port, "meta-data/spot/instance-action")
        assert (status, json.loads(body)["action"]) == (200, "stop")
        done = subprocess.run(
            [*argv, "--clear", "--port", str(port)], capture_output=True, text=True, timeout=30, check=False
        )
        assert (done.returncode, done.stdout) == (0, "cleared 1 scenario(s)\n")
        assert get(port, "meta-data/spot/instance-action")[0] == 404
        path = find_socket(port, os.environ)
        assert path is not None
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    assert not path.exists()
