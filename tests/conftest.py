"""Test-wide safety and the shared fixtures.

Safety: no test may reach a real metadata service. An autouse fixture scrubs AWS_*/ECS_*/METAMOCK_*,
points AWS_EC2_METADATA_SERVICE_ENDPOINT at a closed loopback port and makes any in-process
connection to a link-local or fd00:ec2:: address raise. Real clients run only inside network
namespaces that the `netns` fixture creates with nothing but `lo`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Fixtures shared by the ECS test modules (`clock`, `agent`, `sleeper`); a module may override them.
pytest_plugins = ["tests.ecs_support"]

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"} or bool(
    os.environ.get("METAMOCK_REQUIRE_ALL_TESTS")
)
CLOSED_PORT_ENDPOINT = "http://127.0.0.1:9/"

_FORBIDDEN = [ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("fd00:ec2::/32")]


def _forbidden(address: Any) -> bool:
    if not isinstance(address, tuple) or not address:
        return False
    try:
        ip = ipaddress.ip_address(str(address[0]).split("%")[0])
    except ValueError:
        return False
    return any(ip in net for net in _FORBIDDEN)


class RealMetadataAccess(AssertionError):
    pass


@pytest.fixture(autouse=True)
def _no_real_metadata(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    for name in list(os.environ):
        if name.startswith(("AWS_", "ECS_", "METAMOCK_")):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", CLOSED_PORT_ENDPOINT)
    empty = tmp_path_factory.mktemp("awshome")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty / "credentials"))
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)

    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def connect(self: socket.socket, address: Any) -> None:
        if _forbidden(address):
            raise RealMetadataAccess(f"test tried to reach {address!r} outside a network namespace")
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        if _forbidden(address):
            raise RealMetadataAccess(f"test tried to reach {address!r} outside a network namespace")
        return real_connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)


# ---- root / network-namespace tests -------------------------------------------------------

_skipped_in_ci: list[str] = []


def require(condition: bool, reason: str) -> None:
    """Skip with `reason` on a laptop; fail in CI, where every test must run."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI but not possible here: {reason}")
    pytest.skip(reason)


def require_root() -> None:
    require(os.geteuid() == 0, "needs root")
    require(shutil.which("ip") is not None, "needs iproute2 (ip)")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and IN_CI:
        _skipped_in_ci.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if IN_CI and _skipped_in_ci:
        print(f"\nCI: {len(_skipped_in_ci)} test(s) skipped; a skip in CI is a failure:", file=sys.stderr)
        for nodeid in _skipped_in_ci:
            print(f"  {nodeid}", file=sys.stderr)
        session.exitstatus = 1


class NetNS:
    """A throwaway network namespace with only `lo`, shaped like an ECS task's view."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.procs: list[subprocess.Popen[bytes]] = []

    def cmd(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("timeout", 60)
        return subprocess.run(self.cmd(argv), check=False, **kw)

    def popen(self, argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(self.cmd(argv), **kw)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        pids = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True, check=False)
        for pid in pids.stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), 9)
        subprocess.run(["ip", "netns", "del", self.name], check=False, capture_output=True)


def make_netns(*, ecs_shaped: bool = True, imds_routes: bool = False) -> NetNS:
    require_root()
    name = f"mmt-{uuid.uuid4().hex[:10]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    ns = NetNS(name)
    try:
        ns_ip = ["ip", "netns", "exec", name, "ip"]
        subprocess.run([*ns_ip, "link", "set", "lo", "up"], check=True)
        if ecs_shaped:
            subprocess.run([*ns_ip, "addr", "add", "169.254.170.2/32", "dev", "lo"], check=True)
        if imds_routes:
            subprocess.run(
                [*ns_ip, "route", "add", "169.254.169.254/32", "dev", "lo", "src", "127.0.0.1"], check=True
            )
            subprocess.run([*ns_ip, "-6", "route", "add", "fd00:ec2::254/128", "dev", "lo"], check=True)
    except BaseException:
        ns.close()
        raise
    return ns


@pytest.fixture
def netns() -> Iterator[NetNS]:
    """A namespace with `lo` up and 169.254.170.2 on it (where the fake ECS agent listens)."""
    ns = make_netns()
    try:
        yield ns
    finally:
        ns.close()


@pytest.fixture
def shared_fixtures() -> Path:
    return FIXTURES
