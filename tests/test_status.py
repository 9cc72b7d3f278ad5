"""`metamock status`, the access log, JSON logs and `-v`, through the CLI against real servers in
network namespaces (only `lo`: nothing leaves the machine); the counters' bounds in process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from metamock.imds.counters import MAX_KEY, MAX_PATHS, OTHER, RequestCounters, normalise
from tests.conftest import FIXTURES, make_netns
from tests.ecs_netns import start_fake_agent
from tests.fakes.ecs_agent import CRED_ID, fargate_env
from tests.hardening_support import exchange
from tests.netns import REPO, NetNS, base_env
from tests.servers import ServeProcess, ServiceThread, serve, service_thread, until, wait_ready
from tests.test_hostile_http import _REQUEST

PY = sys.executable
BASE = "http://127.0.0.1:1338"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
SECRETS = json.loads((FIXTURES / "credentials.json").read_text())

# Known requests: what each should count as.
MISSES_404 = [  # three spellings of one path, then another path
    "/2009-04-04/meta-data/public-keys/?fields=all",
    "/latest/meta-data//public-keys",
    "/latest//meta-data/public-keys/",
    "/latest/meta-data/placement/host-id",
]
BAD_TOKEN = "not-a-token-SECRETVALUE"


def metamock(ns: NetNS, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return ns.run([PY, "-m", "metamock", *args], env=env or base_env(), cwd=REPO, timeout=60)


def curl(ns: NetNS, path: str, *headers: str, method: str = "GET") -> str:
    argv = [
        "curl",
        "-s",
        "-g",
        "--noproxy",
        "*",
        "-m",
        "3",
        "-X",
        method,
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
    ]
    for header in headers:
        argv += ["-H", header]
    return ns.run([*argv, BASE + path]).stdout


def status_json(ns: NetNS) -> dict[str, Any]:
    proc = metamock(ns, "status", "--json")
    assert proc.returncode == 0, proc.stderr
    answer: dict[str, Any] = json.loads(proc.stdout)
    return answer


def assert_no_secret(text: str) -> None:
    for secret in (SECRETS["AccessKeyId"], SECRETS["SecretAccessKey"], SECRETS["Token"], CRED_ID, BAD_TOKEN):
        assert secret not in text
    assert "fields=all" not in text  # never a query string


@dataclass
class Served:
    ns: NetNS
    server: ServeProcess
    token: str


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    """`serve --source ecs --access-log --log-format json` with the fake ECS agent, after known requests."""
    ns = make_netns()
    try:
        start_fake_agent(ns)
        server = serve(
            "--stop-notice", "0", "--access-log", "--log-format", "json", source="ecs", host=None, ns=ns,
            env=base_env(**fargate_env()), stderr=subprocess.PIPE,
        )  # fmt: skip
        token = ns.run(
            [
                "curl",
                "-s",
                "-X",
                "PUT",
                "-H",
                "X-aws-ec2-metadata-token-ttl-seconds: 60",
                BASE + "/latest/api/token",
            ]
        ).stdout
        assert token
        for path in MISSES_404:
            assert curl(ns, path) == "404"
        for _ in range(2):
            assert curl(ns, "/latest/meta-data/instance-id?x=1", f"{TOKEN_HEADER}: {BAD_TOKEN}") == "401"
        role = "/latest/meta-data/iam/security-credentials/example-task-role"
        assert curl(ns, role, f"{TOKEN_HEADER}: {token}") == "200"
        yield Served(ns, server, token)
    finally:
        ns.close()


@pytest.mark.root
def test_status_json_counts_the_known_requests(served: Served) -> None:
    answer = status_json(served.ns)
    requests = answer["requests"]
    assert requests["top_404"] == [
        ["/latest/meta-data/public-keys", 3],
        ["/latest/meta-data/placement/host-id", 1],
    ]
    assert requests["top_401"] == [["/latest/meta-data/instance-id", 2]]
    assert requests["by_status"]["404"] == 4
    assert requests["by_status"]["401"] == 2
    assert requests["total"] == sum(requests["by_status"].values())
    assert answer["source"] == "ecs"
    assert answer["tokens"] == "optional"
    assert answer["listen"] == ["127.0.0.1:1338", "[::1]:1338"]
    assert answer["uptime"] >= 0 and answer["started_at"].endswith("Z")
    assert answer["scenarios"] == []


@pytest.mark.root
def test_status_reports_the_credentials_without_a_secret(served: Served) -> None:
    answer = status_json(served.ns)
    creds = answer["credentials"]
    assert creds["role"] == "example-task-role"
    assert creds["expiration"].endswith("Z") and creds["last_refresh"].endswith("Z")
    assert 0 < creds["expires_in"] <= 6 * 3600
    assert creds["last_error"] is None
    assert answer["redirect"] == {"checked": True, "requested": False}
    text = metamock(served.ns, "status")
    assert text.returncode == 0, text.stderr
    assert_no_secret(text.stdout)
    assert_no_secret(json.dumps(answer))
    for needle in (
        "credentials  role example-task-role",
        "redirect     not requested",
        "tokens       optional",
        "source       ecs",
        "/latest/meta-data/public-keys",
    ):
        assert needle in text.stdout, text.stdout
    assert text.stdout.index("public-keys") < text.stdout.index("placement/host-id")  # most first


@pytest.mark.root
def test_status_names_the_last_upstream_error_without_the_credentials_id() -> None:
    stale = "/v2/credentials/stale-0123456789abcdef"
    ns = make_netns()
    try:
        start_fake_agent(ns)
        env = base_env(**{**fargate_env(), "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": stale})
        serve("--stop-notice", "0", source="ecs", host=None, ns=ns, env=env)
        answer = status_json(ns)
        text = metamock(ns, "status").stdout
    finally:
        ns.close()
    creds = answer["credentials"]
    assert creds["role"] is None and creds["expiration"] is None
    assert creds["last_error"], creds
    assert creds["last_error_at"].endswith("Z")
    assert "credentials  none" in text
    assert "last upstream error: " in text and "last upstream error: none" not in text
    for output in (json.dumps(answer), text):
        assert "stale-0123456789abcdef" not in output


@pytest.mark.root
def test_doctor_warns_about_the_missed_paths_with_their_fix(served: Served) -> None:
    proc = metamock(served.ns, "doctor", "--offline", "--json", env=base_env(**fargate_env()))
    checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    missed = checks["missed-paths"]
    assert missed["status"] == "warn", missed
    assert "/latest/meta-data/public-keys (3)" in missed["detail"]
    assert "/latest/meta-data/public-keys: EC2 has no such path either" in missed["fix"]
    assert '[meta-data] "placement/host-id" = "..."' in missed["fix"]


# -- the access log and JSON lines ----------------------------------------------------------------


@pytest.fixture(scope="module")
def logged() -> Iterator[list[str]]:
    """The stderr lines of `serve --access-log --log-format json` after known requests, and a stop."""
    ns = make_netns(ecs_shaped=False)
    try:
        server = serve(
            "--stop-notice", "0", "--access-log", "--log-format", "json", ns=ns, stderr=subprocess.PIPE
        )  # fmt: skip
        assert curl(ns, MISSES_404[0]) == "404"
        assert curl(ns, "/latest/meta-data/instance-id?x=1", f"{TOKEN_HEADER}: {BAD_TOKEN}") == "401"
        assert curl(ns, "/latest/meta-data/instance-id", "User-Agent: test-agent/1.0") == "200"
        server.proc.send_signal(signal.SIGTERM)
        _, err = server.proc.communicate(timeout=30)
        assert server.proc.returncode == 0, err
        yield err.splitlines()
    finally:
        ns.close()


@pytest.mark.root
def test_every_line_is_one_json_object(logged: list[str]) -> None:
    assert logged
    for line in logged:
        record = json.loads(line)
        assert {"time", "level", "logger", "message"} <= set(record), line
        assert record["time"].endswith("Z")
    assert any(json.loads(line)["message"].startswith("serving IMDS") for line in logged)


@pytest.mark.root
def test_access_log_has_one_line_per_request_without_query_or_token(logged: list[str]) -> None:
    access = [json.loads(line) for line in logged if json.loads(line)["logger"] == "metamock.access"]
    # serve's readiness probe (healthcheck: a token PUT, then a GET) comes first; then ours.
    mine = access[-3:]
    assert [(r["method"], r["path"], r["status"], r["token"]) for r in mine] == [
        ("GET", "/2009-04-04/meta-data/public-keys/", 404, False),
        ("GET", "/latest/meta-data/instance-id", 401, True),
        ("GET", "/latest/meta-data/instance-id", 200, False),
    ]
    last = mine[-1]
    assert last["bytes"] == len("i-") + 17  # the instance id
    assert last["agent"] == "test-agent/1.0"
    assert isinstance(last["ms"], float) and last["ms"] >= 0
    assert "404 337 B" in mine[-3]["message"] and "token=no" in mine[-3]["message"]
    assert "token=yes" in mine[-2]["message"]
    assert_no_secret("\n".join(logged))


@pytest.mark.root
def test_sidecar_takes_the_access_log_and_json_from_the_environment() -> None:
    """METAMOCK_ACCESS_LOG / METAMOCK_LOG_FORMAT, as a task definition sets them, on `sidecar`."""
    ns = make_netns(ecs_shaped=False)
    try:
        env = base_env(METAMOCK_ACCESS_LOG="1", METAMOCK_LOG_FORMAT="json", METAMOCK_NETFILTER="false")
        proc = ns.popen(
            [PY, "-m", "metamock", "sidecar", "--source", "local", "--stop-notice", "0", "--run", "idle=sleep 600",
             "--profile-script", "", "--systemd-dir", ""],
            env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        wait_ready(1338, proc, ns)
        assert curl(ns, "/latest/meta-data/public-keys/0/openssh-key") == "404"
        answer = status_json(ns)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
    finally:
        ns.close()
    assert answer["access_log"] is True
    assert answer["requests"]["top_404"] == [["/latest/meta-data/public-keys/0/openssh-key", 1]]
    records = [json.loads(line) for line in err.splitlines()]
    access = [r for r in records if r["logger"] == "metamock.access"]
    assert access[-1]["path"] == "/latest/meta-data/public-keys/0/openssh-key"
    assert access[-1]["status"] == 404


# -- the redirect, -v -----------------------------------------------------------------------------


@pytest.mark.root
def test_status_reports_a_redirect_put_back_by_the_keeper() -> None:
    """Another tool flushes the chain under `serve --netfilter`: `status` counts the repair and
    names what was missing, and the redirect is verified working again (a token round-trip)."""
    ns = make_netns(imds_routes=False)
    try:
        server = serve("--stop-notice", "0", "--netfilter", ns=ns)
        before = status_json(ns)["redirect"]
        assert before["working"] is True and before["repairs"] == 0, before
        assert ns.run(["nft", "flush", "chain", "inet", "metamock", "output"]).returncode == 0

        def repaired() -> bool:
            redirect = status_json(ns)["redirect"]
            return bool(redirect["repairs"] == 1 and redirect["working"])

        until(repaired, "status shows the repair", proc=server.proc, timeout=10)
        redirect = status_json(ns)["redirect"]
        assert redirect["problems"] == [], redirect
        assert "connection verified" in redirect["probe"], redirect
        assert redirect["last_repair"], redirect
        text = metamock(ns, "status").stdout
        assert "put back 1 time(s) since start, last: " in text, text
        server.proc.send_signal(signal.SIGTERM)
        server.proc.communicate(timeout=30)
        assert server.proc.returncode == 0
    finally:
        ns.close()


@pytest.mark.root
def test_status_with_netfilter_and_verbose_without_library_debug() -> None:
    ns = make_netns(imds_routes=False)
    try:
        # ready="http": the start-up lines stay in the pipe (ready="log" would read them).
        server = serve("--stop-notice", "0", "--netfilter", "-v", ns=ns, stderr=subprocess.PIPE)
        answer = status_json(ns)
        redirect = answer["redirect"]
        assert redirect["requested"] is True
        assert redirect["working"] is True, redirect
        assert redirect["backend"] in ("nft", "iptables")
        text = metamock(ns, "status")
        assert "redirect     working (backend " in text.stdout, text.stdout
        server.proc.send_signal(signal.SIGTERM)
        _, err = server.proc.communicate(timeout=30)
        assert server.proc.returncode == 0, err
    finally:
        ns.close()
    lines = err.splitlines()
    debug = [line for line in lines if " DEBUG " in line]
    assert debug, "-v shows metamock's debug lines"
    assert all(line.split(" DEBUG ", 1)[1].startswith("metamock") for line in debug), debug
    assert not [line for line in lines if "pyroute2" in line]


@pytest.mark.root
def test_debug_libraries_is_a_separate_switch() -> None:
    """`netfilter apply -v` shows no pyroute2 line; with --debug-libraries it does (so the check
    above can see them)."""
    ns = make_netns(imds_routes=False)
    try:
        quiet = metamock(ns, "netfilter", "apply", "--port", "1338", "-v")
        assert quiet.returncode == 0, quiet.stderr
        assert metamock(ns, "netfilter", "remove").returncode == 0
        loud = metamock(ns, "netfilter", "apply", "--port", "1338", "-v", "--debug-libraries")
        assert loud.returncode == 0, loud.stderr
        assert metamock(ns, "netfilter", "remove").returncode == 0
    finally:
        ns.close()
    assert "pyroute2" not in quiet.stderr
    assert [line for line in loud.stderr.splitlines() if " DEBUG pyroute2" in line]


# -- nothing listening, pipes -----------------------------------------------------------------------


@pytest.mark.root
def test_status_exits_1_in_one_line_when_no_server_answers() -> None:
    ns = make_netns(ecs_shaped=False)
    try:
        proc = metamock(ns, "status", "--port", "1400")
    finally:
        ns.close()
    assert proc.returncode == 1
    assert proc.stdout == ""
    # No socket at all, or one left by a killed server of a namespace whose inode this one reuses.
    assert proc.stderr.startswith(
        (
            "metamock status: no metamock control socket for port 1400",
            "metamock status: no server listens on ",
        )
    ), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.root
@pytest.mark.parametrize("argv", [["netfilter", "status"], ["status", "--json"], ["--help"]])
def test_a_closed_pipe_is_no_traceback(argv: list[str]) -> None:
    """`metamock netfilter status | head -1`, with the reader already gone: no BrokenPipeError."""
    ns = make_netns(ecs_shaped=False)
    try:
        server = serve("--stop-notice", "0", ns=ns) if argv[0] == "status" else None
        read, write = os.pipe()
        os.close(read)
        try:
            cmd = ns.cmd(
                [PY, "-m", "metamock", *argv]
                if argv[0] != "--help"
                else [PY, "-m", "metamock", "netfilter", *argv]
            )
            proc = subprocess.run(
                cmd,
                stdout=write,
                stderr=subprocess.PIPE,
                text=True,
                env=base_env(),
                cwd=REPO,
                timeout=60,
                check=False,
            )
        finally:
            os.close(write)
        if server is not None:
            server.close()
    finally:
        ns.close()
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "BrokenPipeError" not in proc.stderr


# -- the counters' bounds ----------------------------------------------------------------------------


def test_versions_slashes_and_queries_count_together() -> None:
    same = {
        "/2009-04-04/meta-data/x",
        "/latest/meta-data/x",
        "/latest/meta-data//x/",
        "/1.0/meta-data/x?a=b",
        "//latest/meta-data/x",
    }
    assert {normalise(p) for p in same} == {"/latest/meta-data/x"}
    assert normalise("/foo/bar/") == "/foo/bar"
    assert normalise("/latest/\x1b[31m") == "/latest/\\x1b[31m"
    assert len(normalise("/x" * 10_000)) == MAX_KEY


def test_overflow_counts_as_other() -> None:
    counters = RequestCounters()
    for i in range(MAX_PATHS + 10):
        counters.count(404, f"/latest/meta-data/miss-{i}")
    counters.count(404, "/latest/meta-data/miss-0")
    assert dict(counters.top(404, 100))[OTHER] == 10
    assert dict(counters.top(404, 100))["/latest/meta-data/miss-0"] == 2
    assert counters.entries() == MAX_PATHS + 1
    assert counters.top(404, 2) == [(OTHER, 10), ("/latest/meta-data/miss-0", 2)]


@pytest.fixture(scope="module")
def hostile_target() -> Iterator[ServiceThread]:
    with service_thread() as thread:
        yield thread


def _bounded(counters: RequestCounters) -> None:
    assert counters.entries() <= 2 * (MAX_PATHS + 1)
    for table in counters.missed.values():
        assert all(len(key) <= MAX_KEY and key.isprintable() for key in table)
    assert len(counters.by_status) <= 600  # one key per HTTP status at most


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
    database=None,
)
@given(request=_REQUEST)
def test_the_hostile_corpus_does_not_grow_the_counters(hostile_target: ServiceThread, request: bytes) -> None:
    exchange(hostile_target.port, request, idle=0.3)
    assert hostile_target.service is not None
    _bounded(hostile_target.service.counters)


def test_a_flood_of_unique_misses_stays_bounded(hostile_target: ServiceThread) -> None:
    service = hostile_target.service
    assert service is not None
    batch = b"".join(
        b"GET /latest/meta-data/" + f"u{i}-".encode() + b"z" * 3000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + (b"X-aws-ec2-metadata-token: bad\r\n" if i % 2 else b"") + b"\r\n"
        for i in range(400)
    )  # fmt: skip
    exchange(
        hostile_target.port, batch + b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", idle=2
    )
    _bounded(service.counters)
    assert service.counters.missed[404].get(OTHER, 0) > 0
    assert service.counters.missed[401].get(OTHER, 0) > 0
