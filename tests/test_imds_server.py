"""The IMDS protocol rules, driven over real sockets against the real server."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from metamock.clock import ManualClock
from metamock.settings import ConfigFile
from tests.httpraw import request
from tests.imds_fixtures import fixture_credentials, fixture_source
from tests.servers import running_service

TTL = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN = "X-aws-ec2-metadata-token"


async def token(port: int, ttl: str = "21600") -> str:
    resp = await request(port, "PUT", "/latest/api/token", {TTL: ttl})
    assert resp.status == 200
    return resp.body.decode()


@pytest.mark.parametrize("ttl", ["1", "60", "21600"])
async def test_token_put_accepts_ttl_range_and_echoes_it(ttl: str) -> None:
    async with running_service() as svc:
        resp = await request(svc.port, "PUT", "/latest/api/token", {TTL: ttl})
        assert resp.status == 200
        assert resp.headers[TTL.lower()] == ttl
        assert resp.headers["server"] == "EC2ws"
        assert resp.headers["content-type"].startswith("text/plain")
        assert len(resp.body) > 20


@pytest.mark.parametrize(
    "ttl", [None, "0", "21601", "-1", "abc", "1.5", "60 seconds", "99999999999", "+60", "0x10"]
)
async def test_token_put_rejects_bad_ttl_with_400(ttl: str | None) -> None:
    async with running_service() as svc:
        headers = {} if ttl is None else {TTL: ttl}
        resp = await request(svc.port, "PUT", "/latest/api/token", headers)
        assert resp.status == 400


async def test_token_put_with_x_forwarded_for_is_403() -> None:
    async with running_service() as svc:
        resp = await request(svc.port, "PUT", "/latest/api/token", {TTL: "60", "X-Forwarded-For": "10.0.0.1"})
        assert resp.status == 403
        assert resp.body == b""


@pytest.mark.parametrize("path", ["/2021-03-23/api/token", "/latest/api/token/"])
async def test_token_put_on_versioned_or_slashed_path_is_403(path: str) -> None:
    async with running_service() as svc:
        assert (await request(svc.port, "PUT", path, {TTL: "60"})).status == 403


async def test_get_on_token_path_is_405_with_allow() -> None:
    async with running_service() as svc:
        resp = await request(svc.port, "GET", "/latest/api/token")
        assert resp.status == 405
        assert resp.headers["allow"] == "OPTIONS, PUT"


@pytest.mark.parametrize("method", ["POST", "DELETE", "PATCH", "OPTIONS"])
async def test_other_methods_are_405(method: str) -> None:
    async with running_service() as svc:
        assert (await request(svc.port, method, "/latest/meta-data/instance-id")).status == 405
        assert (await request(svc.port, method, "/latest/api/token")).status == 405


async def test_put_on_a_metadata_path_is_405() -> None:
    async with running_service() as svc:
        resp = await request(svc.port, "PUT", "/latest/meta-data/instance-id", {TTL: "60"})
        assert resp.status == 405


async def test_invalid_token_is_401_even_when_v1_is_allowed() -> None:
    async with running_service() as svc:
        good = await token(svc.port)
        for bad in ["x", good[:-2] + ("AA" if not good.endswith("AA") else "BB"), "A" * 10_000, ""]:
            resp = await request(svc.port, "GET", "/latest/meta-data/instance-id", {TOKEN: bad})
            assert resp.status == 401, bad[:20]
            assert resp.body == b""


async def test_expired_token_is_401() -> None:
    clock = ManualClock(start=1_800_000_000)
    async with running_service(
        clock=clock, source=fixture_source(fixture_credentials(now=clock.time()))
    ) as svc:
        tok = await token(svc.port, ttl="5")
        assert (await request(svc.port, "GET", "/latest/meta-data/instance-id", {TOKEN: tok})).status == 200
        clock.advance(5)
        assert (await request(svc.port, "GET", "/latest/meta-data/instance-id", {TOKEN: tok})).status == 401


async def test_a_token_from_another_process_is_401() -> None:
    async with running_service() as first:
        foreign = await token(first.port)
    async with running_service() as svc:
        resp = await request(svc.port, "GET", "/latest/meta-data/instance-id", {TOKEN: foreign})
        assert resp.status == 401


async def test_tokens_required_refuses_v1_and_accepts_v2() -> None:
    async with running_service(tokens="required") as svc:
        v1 = await request(svc.port, "GET", "/latest/meta-data/instance-id")
        assert v1.status == 401
        tok = await token(svc.port)
        v2 = await request(svc.port, "GET", "/latest/meta-data/instance-id", {TOKEN: tok})
        assert v2.status == 200
        assert re.fullmatch(rb"i-[0-9a-f]{17}", v2.body)


async def test_v1_allowed_by_default() -> None:
    async with running_service() as svc:
        assert (await request(svc.port, "GET", "/latest/meta-data/instance-id")).status == 200


async def test_head_has_headers_and_no_body() -> None:
    async with running_service() as svc:
        get = await request(svc.port, "GET", "/latest/meta-data/local-ipv4")
        head = await request(svc.port, "HEAD", "/latest/meta-data/local-ipv4")
        assert head.status == 200
        assert head.body == b""
        assert head.headers["content-length"] == str(len(get.body))
        assert head.headers["server"] == "EC2ws"


async def test_versions_resolve_to_the_same_tree() -> None:
    async with running_service() as svc:
        root = await request(svc.port, "GET", "/")
        versions = root.body.decode().split("\n")
        assert "latest" in versions and "2009-04-04" in versions and "2021-03-23" in versions
        expected = (await request(svc.port, "GET", "/latest/meta-data/instance-id")).body
        for version in ["2009-04-04", "2021-03-23", "1.0", "2030-01-01"]:
            resp = await request(svc.port, "GET", f"/{version}/meta-data/instance-id")
            assert (resp.status, resp.body) == (200, expected), version
        assert (await request(svc.port, "GET", "/nonsense/meta-data/instance-id")).status == 404


@pytest.mark.parametrize(
    "path",
    [
        "/latest/meta-data/placement/availability-zone",
        "/latest/meta-data/placement/availability-zone/",
        "//latest/meta-data/placement/availability-zone",
        "/latest//meta-data///placement/availability-zone",
        "/latest/meta-data/placement/availability-zone?x=1",
    ],
)
async def test_slashes_collapse_and_trailing_slash_is_the_same(path: str) -> None:
    async with running_service() as svc:
        resp = await request(svc.port, "GET", path)
        assert (resp.status, resp.body) == (200, b"us-west-2a")


async def test_latest_with_and_without_slash_list_the_same() -> None:
    async with running_service() as svc:
        a = await request(svc.port, "GET", "/latest")
        b = await request(svc.port, "GET", "/latest/")
        assert a.body == b.body == b"dynamic/\nmeta-data/"


async def test_encoded_slashes_and_dot_dot_do_not_traverse() -> None:
    async with running_service() as svc:
        assert (await request(svc.port, "GET", "/latest/meta-data%2Finstance-id")).status == 404
        assert (await request(svc.port, "GET", "/latest/meta-data/../meta-data/instance-id")).status == 404


async def test_every_listed_entry_resolves_and_listings_are_direct_children() -> None:
    config = ConfigFile.from_mapping({"user-data": "#!/bin/sh\necho hi\n", "tags": {"Name": "web"}})
    async with running_service(config=config) as svc:
        seen: set[str] = set()
        pending = ["/latest/"]
        while pending:
            directory = pending.pop()
            resp = await request(svc.port, "GET", directory)
            assert resp.status == 200, directory
            entries = resp.body.decode().split("\n")
            assert len(entries) == len(set(entries)), f"duplicates in {directory}"
            assert not resp.body.endswith(b"\n")
            for entry in entries:
                assert entry and "/" not in entry.rstrip("/"), (directory, entry)
                child = directory + entry
                got = await request(svc.port, "GET", child)
                assert got.status == 200, child
                seen.add(child)
                if entry.endswith("/"):
                    pending.append(child)
        assert "/latest/user-data" in seen
        assert "/latest/meta-data/tags/instance/Name" in seen
        assert len(seen) > 40


async def test_content_types_and_server_header() -> None:
    config = ConfigFile.from_mapping({"user-data": "#cloud-config\n"})
    async with running_service(config=config) as svc:
        ud = await request(svc.port, "GET", "/latest/user-data")
        assert ud.headers["content-type"] == "application/octet-stream"
        assert ud.body == b"#cloud-config\n"
        listing = await request(svc.port, "GET", "/latest/meta-data/")
        assert listing.headers["content-type"].startswith("text/plain")
        assert listing.headers["server"] == "EC2ws"
        missing = await request(svc.port, "GET", "/latest/meta-data/nope")
        assert missing.status == 404
        assert missing.headers["server"] == "EC2ws"
        assert b"404 - Not Found" in missing.body


async def test_user_data_absent_without_config() -> None:
    async with running_service() as svc:
        assert (await request(svc.port, "GET", "/latest/user-data")).status == 404
        assert b"user-data" not in (await request(svc.port, "GET", "/latest/")).body


async def test_role_listing_and_credentials_document() -> None:
    async with running_service() as svc:
        listing = await request(svc.port, "GET", "/latest/meta-data/iam/security-credentials/")
        assert listing.body == b"example-task-role"
        creds = await request(svc.port, "GET", "/latest/meta-data/iam/security-credentials/example-task-role")
        doc = json.loads(creds.body)
        assert list(doc) == [
            "Code", "LastUpdated", "Type", "AccessKeyId", "SecretAccessKey", "Token", "Expiration",
        ]  # fmt: skip
        assert doc["Code"] == "Success" and doc["Type"] == "AWS-HMAC"
        assert doc["AccessKeyId"] == "ASIAEXAMPLEEXAMPLE00"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", doc["Expiration"])
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", doc["LastUpdated"])


async def test_no_credentials_means_iam_paths_404() -> None:
    async with running_service(source=fixture_source(None)) as svc:
        assert (await request(svc.port, "GET", "/latest/meta-data/iam/security-credentials/")).status == 404
        assert b"iam/" not in (await request(svc.port, "GET", "/latest/meta-data/")).body


async def test_expired_credentials_are_not_served() -> None:
    clock = ManualClock(start=1_800_000_000)
    creds = fixture_credentials(now=clock.time(), lifetime=600)
    async with running_service(clock=clock, source=fixture_source(creds)) as svc:
        path = "/latest/meta-data/iam/security-credentials/example-task-role"
        assert (await request(svc.port, "GET", path)).status == 200
        clock.advance(601)
        assert (await request(svc.port, "GET", path)).status == 404


@pytest.mark.parametrize(
    "host", ["evil.example.com", "evil.example.com:1338", "10.0.0.5", "169.254.169.254.nip.io"]
)
async def test_foreign_host_header_is_403(host: str) -> None:
    async with running_service() as svc:
        raw = f"GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
        assert (await request(svc.port, "GET", "", raw=raw)).status == 403


@pytest.mark.parametrize(
    "host", ["169.254.169.254", "169.254.169.254:80", "[fd00:ec2::254]", "localhost:1338", "[::1]:9"]
)
async def test_metadata_and_loopback_host_headers_are_allowed(host: str) -> None:
    async with running_service() as svc:
        raw = f"GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
        assert (await request(svc.port, "GET", "", raw=raw)).status == 200


async def test_malformed_requests_are_400_without_a_version_banner() -> None:
    async with running_service() as svc:
        resp = await request(svc.port, "GET", "", raw=b"GET /latest\x00/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert resp.status == 400
        assert resp.headers.get("server") == "EC2ws"
        assert b"aiohttp" not in resp.body


async def test_a_scenario_flag_starts_the_scenario() -> None:
    async with running_service(scenario=["spot:delay=0,action=stop,in=120"]) as svc:
        resp = await request(svc.port, "GET", "/latest/meta-data/spot/instance-action")
        assert resp.status == 200
        assert json.loads(resp.body)["action"] == "stop"
        assert b"spot/" in (await request(svc.port, "GET", "/latest/meta-data/")).body


def test_the_http_face_imports_no_translation_settings_or_scenarios() -> None:
    """The server routes on API_VERSIONS, which lives with it (metamock.imds.versions): importing
    it must not pull in the translation and, through it, the settings and the scenarios."""
    code = (
        "import sys, metamock.imds.server; print(' '.join(sorted(m for m in sys.modules if 'metamock' in m)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = set(done.stdout.split())
    assert "metamock.imds.server" in loaded
    assert not loaded & {"metamock.translate", "metamock.settings", "metamock.scenarios"}, sorted(loaded)
