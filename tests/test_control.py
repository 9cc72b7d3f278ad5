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
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from metamock import cli
from metamock.control import ControlServer, choose_path
from metamock.control_socket import call, find_socket, private_dir, socket_candidates
from metamock.errors import MetamockError
from tests.cli_support import assert_one_line_exit_2, cli_env
from tests.conftest import make_netns, require_root
from tests.netns import REPO, NetNS
from tests.scenarios_support import fetch, get
from tests.servers import ServeProcess, running_service, serve


async def _call(path: Path, request: dict[str, object]) -> dict[str, object]:
    # The client blocks; the server runs on this loop, so the client runs in a thread.
    return await asyncio.to_thread(call, path, request)


async def _cli(*argv: str) -> int:
    return await asyncio.to_thread(cli.main, ["trigger", *argv])


async def test_socket_is_0600_and_removed_at_stop(tmp_path: Path) -> None:
    async with running_service(tmp_path) as service:
        assert service.control is not None
        info = service.control.path.stat()
        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o600
        assert info.st_uid == os.geteuid()
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".control")] == []
    assert not (tmp_path / "control.sock").exists()


async def test_trigger_clear_and_status_through_the_socket(tmp_path: Path) -> None:
    async with running_service(tmp_path) as service, aiohttp.ClientSession() as s:
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
    async with running_service(tmp_path) as service, aiohttp.ClientSession() as s:
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
    async with running_service(tmp_path) as service:
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
    async with running_service(tmp_path) as service:
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
    async with running_service(tmp_path) as service:
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
    with serve("--stop-notice", "0") as server:
        port, proc = server.port, server.proc
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


# -- what `metamock trigger` tells a user -----------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["spot", "--delay", "-5"], "metamock trigger: --delay: -5.0: expected seconds"),
        (["spot", "--in", "99999999999"], "metamock trigger: --in: "),
        (["rebalance", "--at", "yesterday"], "metamock trigger: --at: 'yesterday': expected a time"),
        (["maintenance", "--not-before", "soon"], "metamock trigger: --not-before: 'soon': expected a time"),
    ],
)
def test_trigger_refuses_what_the_server_would_refuse(argv: list[str], needle: str) -> None:
    """Checked with the server's own validation before any socket is looked for: exit 2."""
    proc = subprocess.run(
        [sys.executable, "-m", "metamock", "trigger", *argv, "--port", "9"],
        env=cli_env(), capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert_one_line_exit_2(proc, needle)


async def test_a_server_refuses_requests_for_another_namespace(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"
    server = ControlServer(path, lambda request: {"ok": True, "seen": request}, netns="21-111")
    await server.start()
    try:
        other = await asyncio.to_thread(call, path, {"op": "status"}, 5.0, "21-222")
        assert other == {
            "ok": False,
            "error": "this server runs in another network namespace (21-111, not 21-222)",
        }
        same = await asyncio.to_thread(call, path, {"op": "status"}, 5.0, "21-111")
        assert same == {"ok": True, "seen": {"op": "status"}}  # the handler never sees the key
    finally:
        await server.close()


def _serve_in(ns: NetNS, *extra: str, user: list[str] | None = None) -> ServeProcess:
    return serve("--stop-notice", "0", *extra, ns=ns, env=cli_env(), prefix=user or (), ready="log")


def _trigger_in(ns: NetNS, *argv: str, user: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    return ns.run(
        [*(user or []), sys.executable, "-m", "metamock", "trigger", *argv], env=cli_env(), cwd=REPO
    )


def _spot_status(ns: NetNS) -> str:
    got = ns.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", SPOT_URL])
    return got.stdout


SPOT_URL = "http://127.0.0.1:1338/latest/meta-data/spot/instance-action"
NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
OTHER = ["setpriv", "--reuid", "65533", "--regid", "65533", "--clear-groups"]


@pytest.fixture
def two_ns() -> Iterator[tuple[NetNS, NetNS]]:
    first = make_netns(ecs_shaped=False)
    try:
        second = make_netns(ecs_shaped=False)
        try:
            yield first, second
        finally:
            second.close()
    finally:
        first.close()


@pytest.mark.root
def test_same_port_in_two_namespaces_are_two_servers(two_ns: tuple[NetNS, NetNS]) -> None:
    """Both servers listen on 1338, each in its own namespace, sockets side by side in /run/metamock:
    `trigger` in the first changes the first only."""
    first, second = two_ns
    servers = [_serve_in(first), _serve_in(second)]
    try:
        done = _trigger_in(first, "spot", "--port", "1338")
        assert done.returncode == 0, done.stderr
        assert (_spot_status(first), _spot_status(second)) == ("200", "404")
        status = _trigger_in(second, "--status", "--port", "1338")
        assert (status.returncode, json.loads(status.stdout)) == (0, [])
    finally:
        assert [server.stop() for server in servers] == [0, 0]


@pytest.mark.root
def test_a_stale_socket_is_named_and_then_replaced(two_ns: tuple[NetNS, NetNS]) -> None:
    """A socket left by a dead server (or one of a destroyed namespace whose inode the kernel gave to
    this one) is not a server: trigger says so, and the next server replaces it."""
    ns, _ = two_ns
    key = ns.run([sys.executable, "-c", KEY_CODE], env=cli_env(), cwd=REPO).stdout.strip()
    stale = Path("/run/metamock") / f"control-1338-net{key}.sock"
    Path("/run/metamock").mkdir(mode=0o700, exist_ok=True)
    # An earlier namespace with this inode may have left its own stale socket here already
    # (a server killed by the suite): this test makes the stale socket it describes.
    stale.unlink(missing_ok=True)
    with socket.socket(socket.AF_UNIX) as left:
        left.bind(str(stale))
    try:
        done = _trigger_in(ns, "spot", "--port", "1338")
        assert done.returncode == 1
        assert f"no server listens on {stale} (left behind by a server that stopped?)" in done.stderr
        server = _serve_in(ns)
        try:
            assert _trigger_in(ns, "spot", "--port", "1338").returncode == 0
            assert _spot_status(ns) == "200"
        finally:
            assert server.stop() == 0
        assert not stale.exists()
    finally:
        stale.unlink(missing_ok=True)


KEY_CODE = "from metamock.control_socket import netns_key; print(netns_key())"


@pytest.mark.root
def test_another_users_socket_is_named_not_missing(two_ns: tuple[NetNS, NetNS]) -> None:
    """A root server's socket, triggered by nobody: whose it is, exit 2. A server of nobody: root
    finds it in nobody's directory; a third user is told whose directory that is."""
    ns, other_ns = two_ns
    server = _serve_in(ns)
    try:
        done = _trigger_in(ns, "spot", "--port", "1338", user=NOBODY)
        assert_one_line_exit_2(done, "/run/metamock belongs to uid 0 (root)", "permission denied")
        assert _spot_status(ns) == "404"
    finally:
        assert server.stop() == 0
    server = _serve_in(other_ns, user=NOBODY)
    try:
        done = _trigger_in(other_ns, "spot", "--port", "1338", user=OTHER)
        assert_one_line_exit_2(done, "/tmp/metamock-65534 belongs to uid 65534", "permission denied")
        done = _trigger_in(other_ns, "spot", "--port", "1338")  # root
        assert done.returncode == 0, done.stderr
        assert _spot_status(other_ns) == "200"
    finally:
        assert server.stop() == 0
