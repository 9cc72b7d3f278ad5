"""A web page cannot read credentials: no CORS ever approved, foreign Host refused (DNS rebinding).

Over HTTP: a preflight is refused (405, no Access-Control-Allow-*), no response carries CORS
headers, a Host that does not name the metadata service or a loopback listener gets 403.
In a real browser (headless Chromium in a network namespace with only `lo`): a page from another
origin cannot read the token or the credentials, while it can read a server that allows CORS;
after DNS rebinding (same origin, metamock now behind it) every request gets 403.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, require
from tests.httpraw import RawResponse, request
from tests.netns import NetNS
from tests.servers import running_service, serve, wait_http, wait_ready

ROLE = "/latest/meta-data/iam/security-credentials/"
CREDENTIALS = ROLE + "example-task-role"
TTL = {"X-aws-ec2-metadata-token-ttl-seconds": "60"}
EVIL = "http://evil.example"


async def _raw(port: int, method: str, path: str, host: str | None, *headers: str) -> RawResponse:
    # Without a Host the request is HTTP/1.0 (HTTP/1.1 requires one; aiohttp answers 400).
    version = "HTTP/1.1" if host is not None else "HTTP/1.0"
    lines = [f"{method} {path} {version}", "Connection: close", *headers]
    if host is not None:
        lines.insert(1, f"Host: {host}")
    return await request(port, method, path, raw=("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))


def _no_cors(response: RawResponse) -> None:
    assert not [h for h in response.headers if h.startswith("access-control-")], response.headers


@pytest.mark.parametrize("path", ["/latest/api/token", CREDENTIALS, ROLE, "/latest/meta-data/"])
async def test_a_preflight_is_refused_without_cors_headers(path: str) -> None:
    async with running_service() as service:
        response = await _raw(
            service.port, "OPTIONS", path, f"127.0.0.1:{service.port}",
            f"Origin: {EVIL}", "Access-Control-Request-Method: PUT",
            "Access-Control-Request-Headers: x-aws-ec2-metadata-token-ttl-seconds",
        )  # fmt: skip
    assert response.status == 405
    _no_cors(response)


async def test_no_response_carries_cors_headers() -> None:
    async with running_service() as service:
        port = service.port
        origin = {"Origin": EVIL}
        put = await request(port, "PUT", "/latest/api/token", {**TTL, **origin})
        assert put.status == 200
        _no_cors(put)
        token = {"X-aws-ec2-metadata-token": put.body.decode()}
        for path in ("/", "/latest/meta-data/", ROLE, CREDENTIALS, "/latest/nothing", "/latest/api/token"):
            for method in ("GET", "HEAD", "POST"):
                response = await request(port, method, path, {**token, **origin})
                assert response.status in (200, 404, 405), (method, path, response.status)
                _no_cors(response)


@pytest.mark.parametrize(
    "host",
    [
        "evil.example",
        "evil.example:{port}",
        "127.0.0.1.nip.io:{port}",
        "localhost.evil.example:{port}",
        "169.254.169.254.evil.example",
        "[fd00:ec2::254].evil.example",
        "10.0.0.5:{port}",
        "",
    ],
)
async def test_a_foreign_host_gets_403(host: str) -> None:
    async with running_service() as service:
        port = service.port
        shown = host.format(port=port)
        for method, path, headers in (
            ("GET", CREDENTIALS, ()),
            ("GET", ROLE, ()),
            ("PUT", "/latest/api/token", ("X-aws-ec2-metadata-token-ttl-seconds: 60",)),
        ):
            response = await _raw(port, method, path, shown, *headers)
            assert response.status == 403, (shown, method, path)
            assert b"AccessKeyId" not in response.body


@pytest.mark.parametrize(
    "host",
    ["169.254.169.254", "169.254.169.254:80", "[fd00:ec2::254]", "[fd00:ec2::254]:80",
     "127.0.0.1:{port}", "localhost:{port}", "LOCALHOST:{port}", "[::1]:{port}", None],
)  # fmt: skip
async def test_metadata_and_loopback_hosts_are_answered(host: str | None) -> None:
    async with running_service() as service:
        shown = host.format(port=service.port) if host is not None else None
        response = await _raw(service.port, "GET", CREDENTIALS, shown)
    assert response.status == 200
    assert b"AccessKeyId" in response.body


# ---- a real browser -------------------------------------------------------------------------------

METAMOCK, PAGE, COLLECTOR = 1338, 8000, 8001


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    require(path is not None, "needs chromium (apt-get install chromium)")
    assert path is not None
    return path


def _wait_report(out: Path, phase: str, timeout: float) -> dict[str, dict[str, object]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if out.exists():
            for line in out.read_text().splitlines():
                entry = json.loads(line)
                if entry["phase"] == phase:
                    return entry["results"]  # type: ignore[no-any-return]
        time.sleep(0.1)
    raise AssertionError(f"the page never reported {phase!r}")


@pytest.mark.root
def test_a_cross_origin_page_and_dns_rebinding_cannot_read_credentials(netns: NetNS, tmp_path: Path) -> None:
    chromium = _chromium()
    out = tmp_path / "reports.jsonl"
    helper = [sys.executable, "-m", "tests.hardening_browser"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    quiet = {"cwd": REPO, "env": env, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    serve("--stop-notice", "0", port=METAMOCK, ns=netns, env=env, ready=None)
    collector = netns.popen([*helper, "collector", "--port", str(COLLECTOR), "--out", str(out)], **quiet)
    page = netns.popen(
        [*helper, "page", "--port", str(PAGE), "--metamock", str(METAMOCK), "--collector", str(COLLECTOR)],
        **quiet,
    )
    wait_ready(METAMOCK, ns=netns)
    wait_http(f"http://127.0.0.1:{COLLECTOR}/cors", ns=netns, proc=collector)
    wait_http(f"http://127.0.0.1:{PAGE}/", ns=netns, proc=page)
    browser = netns.popen(
        [
            chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage",
            "--host-resolver-rules=MAP rebind.test 127.0.0.1", f"--user-data-dir={tmp_path / 'profile'}",
            f"http://rebind.test:{PAGE}/",
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        cross = _wait_report(out, "cross-origin", 30)
        # The control proves the harness reads what CORS allows; metamock allows nothing.
        assert cross["control"] == {"status": 200, "body": "control-ok"}, cross
        for name in ("put_token", "role_list", "credentials"):
            assert cross[name] == {"blocked": "TypeError"}, (name, cross)
        # DNS rebinding: the page's own origin now reaches a metamock.
        page.kill()
        page.wait(10)
        serve("--stop-notice", "0", port=PAGE, ns=netns, env=env, ready=None)
        rebound = _wait_report(out, "rebound", 45)
        print(f"cross-origin: {cross}\nrebound: {rebound}")
        for name in ("put_token", "role_list", "credentials"):
            assert rebound[name]["status"] == 403, (name, rebound)
            assert "AccessKeyId" not in str(rebound[name].get("body")), rebound
    finally:
        browser.kill()
        browser.wait(10)
