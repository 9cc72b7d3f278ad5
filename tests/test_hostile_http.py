"""Hostile HTTP against the real server on 127.0.0.1: always a 4xx or a closed connection, never a
5xx, an unhandled exception or a dead server; slow clients are cut; memory stays flat."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metamock.imds.limits import ConnectionLimits, LimitedServer, default_max_connections
from metamock.imds.server import ImdsHandler, make_server
from metamock.service import Service
from tests.hardening_support import HEALTH, ErrorRecords, exchange, healthy, rss_kb, statuses
from tests.servers import ServiceThread, running_service, serve, service_thread

ROLE = "/latest/meta-data/iam/security-credentials/example-task-role"
FUZZ = settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)


@pytest.fixture(scope="module")
def server() -> Iterator[ServiceThread]:
    with service_thread() as thread:
        yield thread


@asynccontextmanager
async def imds_listener(service: Service, limits: ConnectionLimits) -> AsyncIterator[int]:
    """`service`'s handler behind `make_server(limits=...)` on 127.0.0.1: the port."""
    runner = web.ServerRunner(make_server(ImdsHandler(service, service.tokens), limits=limits))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield site.port
    finally:
        await runner.cleanup()


@pytest.fixture
def crashes() -> Iterator[ErrorRecords]:
    """Every ERROR logged while the test runs (the suite fails on any)."""
    records = ErrorRecords()
    root = logging.getLogger()
    root.addHandler(records)
    try:
        yield records
    finally:
        root.removeHandler(records)
    assert not [r.getMessage() for r in records.records], "the server logged errors"


def _assert_sane(port: int, answer: bytes) -> None:
    codes = statuses(answer)
    assert all(code < 500 for code in codes), (codes, answer[:300])
    assert healthy(port), "the server stopped answering"


# ---- building blocks ---------------------------------------------------------------------------

_SEGMENT = st.one_of(
    st.sampled_from(
        [
            "latest", "meta-data", "iam", "security-credentials", "example-task-role", "api", "token",
            "dynamic", "user-data", "2009-04-04", "instance-id", "..", ".", "%2F", "%2f", "%2e%2e",
            "..%2F", "%00", "%", "%zz", "~", "*", "?", "#", ";", "\\", "..\\..",
        ]
    ),
    st.text(min_size=1, max_size=24).map(lambda t: t.replace("\r", "").replace("\n", "").replace(" ", "")),
)  # fmt: skip
_PATH = st.builds(
    lambda segs, slash, query: ("/" + "/".join(segs) + ("/" if slash else "") + query).encode(
        "utf-8", "surrogateescape"
    ),
    st.lists(_SEGMENT, max_size=8),
    st.booleans(),
    st.sampled_from(["", "?", "?a=b", "?x=%00", "?" + "q" * 300]),
)
_RAW_PATH = st.one_of(_PATH, st.binary(max_size=64).map(lambda b: b"/" + b.replace(b" ", b"")))
_METHOD = st.one_of(
    st.sampled_from(
        [b"GET", b"HEAD", b"PUT", b"POST", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE", b"CONNECT", b"get",
         b"PROPFIND", b"G\x00T", b"GET\xff", b"", b"M" * 200]
    ),
    st.binary(min_size=1, max_size=12).map(lambda b: b.replace(b" ", b"_")),
)  # fmt: skip
_HEADER_NAME = st.one_of(
    st.sampled_from(
        [b"Host", b"X-aws-ec2-metadata-token", b"X-aws-ec2-metadata-token-ttl-seconds", b"X-Forwarded-For",
         b"Connection", b"Origin", b"Accept", b"User-Agent", b"Expect", b"Upgrade", b"X-\x00", b"\xffname"]
    ),
    st.binary(min_size=1, max_size=16),
)  # fmt: skip
_HEADER_VALUE = st.one_of(
    st.sampled_from([b"127.0.0.1", b"169.254.169.254", b"21600", b"0", b"-1", b"99999999999", b"close",
                     b"keep-alive", b"100-continue", b"websocket", b"evil.example", b"\x00", b"\xff\xfe"]),
    st.binary(max_size=96),
)  # fmt: skip
_BANNED = (b"content-length", b"transfer-encoding")  # a body would make the reader wait for it


def _request(method: bytes, path: bytes, headers: list[tuple[bytes, bytes]], version: bytes) -> bytes:
    lines = [method + b" " + path + b" " + version]
    for name, value in headers:
        if name.strip().lower() in _BANNED:
            continue
        lines.append(name + b": " + value)
    return b"\r\n".join(lines) + b"\r\n\r\n"


_REQUEST = st.builds(
    _request,
    _METHOD,
    _RAW_PATH,
    st.lists(st.tuples(_HEADER_NAME, _HEADER_VALUE), max_size=8).map(
        lambda hs: [(b"Host", b"127.0.0.1"), *hs]
    ),
    st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1x", b"", b"http/1.1"]),
)


# ---- property tests ------------------------------------------------------------------------------


@FUZZ
@given(request=_REQUEST)
def test_random_requests_never_get_a_5xx(server: ServiceThread, request: bytes) -> None:
    records = ErrorRecords()
    logging.getLogger().addHandler(records)
    try:
        answer = exchange(server.port, request + HEALTH, idle=0.5)
        _assert_sane(server.port, answer)
    finally:
        logging.getLogger().removeHandler(records)
    assert not records.records, [r.getMessage() for r in records.records]


@FUZZ
@given(junk=st.binary(min_size=1, max_size=4096))
def test_random_bytes_never_get_a_5xx(server: ServiceThread, junk: bytes) -> None:
    answer = exchange(server.port, junk + b"\r\n\r\n" + HEALTH, idle=0.5)
    _assert_sane(server.port, answer)


@FUZZ
@given(
    parts=st.lists(
        st.one_of(
            _REQUEST,
            st.just(b"GET /latest/meta-data/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"),
            st.just(b"PUT /latest/api/token HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"X-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n"),
            st.binary(max_size=64),
        ),
        min_size=2,
        max_size=12,
    )
)  # fmt: skip
def test_pipelined_junk_never_gets_a_5xx(server: ServiceThread, parts: list[bytes]) -> None:
    answer = exchange(server.port, b"".join(parts) + HEALTH, idle=0.5)
    _assert_sane(server.port, answer)


@FUZZ
@given(data=st.data())
def test_half_sent_requests_get_a_4xx_or_a_close(server: ServiceThread, data: st.DataObject) -> None:
    full = data.draw(_REQUEST) + HEALTH
    cut = data.draw(st.integers(min_value=0, max_value=len(full) - 1))
    answer = exchange(server.port, full[:cut], idle=0.5, half_close=True)
    _assert_sane(server.port, answer)


# ---- specific shapes -----------------------------------------------------------------------------


def _get(port: int, target: bytes, *headers: bytes, method: bytes = b"GET") -> int:
    head = method + b" " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    answer = exchange(port, head + b"".join(h + b"\r\n" for h in headers) + b"\r\n")
    codes = statuses(answer)
    assert len(codes) == 1, answer[:300]
    return codes[0]


@pytest.mark.parametrize(
    "target",
    [
        b"/latest/meta-data/../meta-data/instance-id",
        b"/latest/meta-data/iam/security-credentials/../../../../etc/passwd",
        b"/../../../etc/passwd",
        b"/latest/meta-data%2Finstance-id",
        b"/latest%2Fmeta-data%2Finstance-id",
        b"/latest/meta-data/iam/security-credentials/example-task-role%2F..%2F..",
        b"/latest/meta-data/%2e%2e/meta-data/instance-id",
        b"/latest/meta-data/./instance-id",
        b"/latest/meta-data/instance-id%00",
        b"/latest/meta-data/instance-id\xff\xfe",
        b"/latest/meta-data/\xc3\xa9",
    ],
)
def test_traversal_and_encoded_slashes_are_just_missing_names(
    server: ServiceThread, crashes: ErrorRecords, target: bytes
) -> None:
    assert _get(server.port, target) in (400, 404)


def test_the_request_line_and_headers_are_bounded(server: ServiceThread, crashes: ErrorRecords) -> None:
    port = server.port
    assert _get(port, b"/latest/meta-data/" + b"a" * 15000) == 404
    assert _get(port, b"/latest/meta-data/" + b"a" * 20000) == 400
    assert _get(port, b"/latest/meta-data/", b"X-Big: " + b"v" * 20000) == 400
    assert _get(port, b"/latest/meta-data/", *[b"X-H%d: v" % n for n in range(200)]) == 400
    assert _get(port, b"/latest/meta-data/" + b"\x00") == 400
    assert healthy(port)


@pytest.mark.parametrize("size", [10_000, 12_000, 16_000])
def test_huge_tokens_are_unauthorised_not_errors(
    server: ServiceThread, crashes: ErrorRecords, size: int
) -> None:
    token = b"A" * size
    assert _get(server.port, ROLE.encode(), b"X-aws-ec2-metadata-token: " + token) == 401
    ttl = b"X-aws-ec2-metadata-token-ttl-seconds: " + b"9" * size
    assert _get(server.port, b"/latest/api/token", ttl, method=b"PUT") == 400


@pytest.mark.parametrize(
    "method", [b"POST", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE", b"CONNECT", b"PROPFIND", b"get", b"BREW"]
)
def test_other_methods_are_refused(server: ServiceThread, crashes: ErrorRecords, method: bytes) -> None:
    code = _get(server.port, b"/latest/meta-data/", method=method)
    assert code in (400, 405)


async def test_a_half_sent_request_is_closed_at_the_header_deadline() -> None:
    """The real handler and server factory over a real socket, with a 0.3 s header deadline
    (production: 10 s, pinned by the next test): the half-sent request is cut, not served."""
    deadline = 0.3
    async with (
        running_service() as service,
        imds_listener(service, ConnectionLimits(header_timeout=deadline)) as port,
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /latest/meta-data/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        start = time.monotonic()
        try:
            tail = await asyncio.wait_for(reader.read(), 5)
        except ConnectionError:
            tail = b""
        took = time.monotonic() - start
        writer.close()
    assert statuses(tail) in ([], [400], [408])
    assert deadline * 0.8 < took < deadline + 1.5, f"a half-sent request held its connection for {took:.2f} s"


def test_the_service_runs_with_the_production_limits(server: ServiceThread) -> None:
    """What `serve` wires: `make_server`'s default limits, the values docs/hardening.md lists."""
    assert server.service is not None
    runner = server.service._runner
    assert runner is not None and isinstance(runner.server, LimitedServer)
    limits = runner.server.limits
    assert limits == ConnectionLimits()
    assert (limits.header_timeout, limits.idle_timeout, limits.max_header_bytes) == (10.0, 30.0, 65536)
    assert limits.max_connections == default_max_connections()


def test_slow_clients_do_not_starve_the_others(server: ServiceThread, crashes: ErrorRecords) -> None:
    socks = []
    try:
        for _ in range(200):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            sock.sendall(b"GET /latest/meta-data/ HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            socks.append(sock)
        start = time.monotonic()
        for _ in range(20):
            assert healthy(server.port)
        assert time.monotonic() - start < 2
    finally:
        for sock in socks:
            sock.close()


def test_missing_iam_paths_cost_no_rebuild(server: ServiceThread, crashes: ErrorRecords) -> None:
    """A GET for a missing name under meta-data/iam/ may fetch credentials when the tree has
    none; with credentials in the tree it must be a plain 404, not a tree rebuild (which would
    also throw away the lazily signed identity documents): an unauthenticated CPU amplifier."""
    rebuilds: list[object] = []
    service = server.service
    assert service is not None
    server.call(service.on_rebuild.append, rebuilds.append)
    try:
        for path in (b"/latest/meta-data/iam/nope", b"/latest/meta-data/iam/security-credentials/nope"):
            request = b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            assert set(statuses(exchange(server.port, request * 20 + HEALTH))) == {404, 200}
    finally:
        server.call(service.on_rebuild.remove, rebuilds.append)
    assert len(rebuilds) == 0, f"{len(rebuilds)} tree rebuilds for 40 missing iam paths"


# ---- memory ----------------------------------------------------------------------------------------


def _burst(port: int, rounds: int, seed: int) -> None:
    """Hostile but bounded: unique long paths, 10 KB tokens, junk, many hosts, pipelines."""
    for n in range(rounds):
        unique = b"%d-%d-" % (seed, n)
        batch = [
            b"GET /latest/meta-data/" + unique + b"p" * 12000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
            b"GET " + ROLE.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nX-aws-ec2-metadata-token: "
            + unique + b"t" * 10000 + b"\r\n\r\n",
            b"GET /latest/meta-data/ HTTP/1.1\r\nHost: h" + unique + b"x" * 3000 + b".example\r\n\r\n",
            b"PUT /latest/api/token HTTP/1.1\r\nHost: 127.0.0.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 5\r\n\r\n",
        ]  # fmt: skip
        answer = exchange(port, b"".join(batch) + HEALTH, idle=2)
        assert all(code < 500 for code in statuses(answer))
        exchange(port, b"\x16\x03\x01" + unique * 50 + b"\r\n\r\n", idle=0.5)


@pytest.mark.slow
def test_memory_stays_flat_under_a_hostile_burst(tmp_path: object) -> None:
    with serve("--stop-notice", "0") as server:  # killed at the end
        _burst(server.port, 200, 0)  # warm: caches, allocator arenas, the identity key
        before = rss_kb(server.pid)
        _burst(server.port, 1500, 1)
        after = rss_kb(server.pid)
        assert healthy(server.port)
    growth_mb = (after - before) / 1024
    print(f"RSS {before / 1024:.1f} MB -> {after / 1024:.1f} MB after 1500 hostile rounds")
    assert growth_mb < 5, f"RSS grew {growth_mb:.1f} MB"
