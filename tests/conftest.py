"""Test-wide safety and the shared fixtures.

Safety: no test may reach a real metadata service. An autouse fixture scrubs AWS_*/ECS_*/METAMOCK_*,
points AWS_EC2_METADATA_SERVICE_ENDPOINT at a closed loopback port and makes any in-process
connection to a link-local or fd00:ec2:: address raise. Real clients run only inside network
namespaces that the `netns` fixture creates with nothing but `lo`.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from metamock.runtime import install_process_effects
from tests.netns import NetNS, create_netns

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


def pytest_configure(config: pytest.Config) -> None:
    # What every metamock process does at start-up (the banner, quiet botocore), so in-process
    # services in tests behave like `metamock serve` whichever test module runs first.
    install_process_effects()


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


def make_netns(*, ecs_shaped: bool = True, imds_routes: bool = False) -> NetNS:
    require_root()
    return create_netns(ecs_shaped=ecs_shaped, imds_routes=imds_routes)


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
