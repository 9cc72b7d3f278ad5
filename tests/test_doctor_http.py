"""Checks that talk HTTP, in-process over loopback: TMDE, the credentials endpoint (FULL_URI
shape), the server, STS against moto_server, and the runner's time bound."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web

from metamock.doctor import credentials, ecs, server, sts
from metamock.doctor.context import DoctorContext
from metamock.doctor.report import Check, Status
from metamock.doctor.runner import GROUPS, Group, run_checks
from metamock.secrets import Secret
from metamock.sources import local
from metamock.sources.base import Credentials, TaskFacts
from metamock.sources.static import StaticSource
from tests.doctor_hang import hanging
from tests.doctor_support import SECRETS, assert_no_secrets, by_name, context
from tests.fakes.ecs_agent import AUTH_TOKEN, FakeEcsAgent, fargate_env
from tests.moto_fixture import moto_server
from tests.servers import free_port, running_service

__all__ = ["moto_server"]

Run = Callable[[DoctorContext, list[Check]], Awaitable[None]]


async def _run(group: Run, ctx: DoctorContext) -> dict[str, Check]:
    out: list[Check] = []
    await group(ctx, out)
    assert_no_secrets(out)
    return by_name(out)


@pytest.fixture
async def agent() -> AsyncIterator[FakeEcsAgent]:
    fake = FakeEcsAgent()
    await fake.start("127.0.0.1", 0)
    try:
        yield fake
    finally:
        await fake.stop()


def pod_identity_env(agent: FakeEcsAgent) -> dict[str, str]:
    """TMDE and a FULL_URI credentials endpoint, both on the in-process fake (loopback)."""
    env = fargate_env("127.0.0.1", agent.port)
    del env["AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"]
    env["AWS_CONTAINER_CREDENTIALS_FULL_URI"] = f"http://127.0.0.1:{agent.port}/v1/credentials"
    env["AWS_CONTAINER_AUTHORIZATION_TOKEN"] = AUTH_TOKEN
    return env


# ---- TMDE ------------------------------------------------------------------------------------


async def test_tmde_and_clock_drift_pass(agent: FakeEcsAgent, tmp_path: Path) -> None:
    checks = await _run(ecs.checks, context(fargate_env("127.0.0.1", agent.port), tmp_path))
    assert checks["tmde"].status is Status.PASS, checks["tmde"]
    assert "(FARGATE) answered in" in checks["tmde"].detail
    assert checks["clock-drift"].status is Status.PASS
    assert checks["clock-drift"].detail == "SYNCHRONIZED, error bound 0.546 ms"


@pytest.mark.parametrize(
    ("steer", "seen"),
    [
        ({"status": {"task": 500}}, "HTTP 500"),
        ({"status": {"task": 429}}, "HTTP 429"),
        ({"bad_json": {"task"}}, "not a task document"),
    ],
)
async def test_tmde_fails_on_bad_answers(
    agent: FakeEcsAgent, tmp_path: Path, steer: dict[str, object], seen: str
) -> None:
    for attr, value in steer.items():
        setattr(agent, attr, value)
    checks = await _run(ecs.checks, context(fargate_env("127.0.0.1", agent.port), tmp_path))
    assert checks["tmde"].status is Status.FAIL
    assert seen in checks["tmde"].detail
    assert checks["tmde"].fix
    assert checks["clock-drift"].status is Status.SKIP


async def test_tmde_unreachable_fails(tmp_path: Path) -> None:
    checks = await _run(ecs.checks, context(fargate_env("127.0.0.1", free_port()), tmp_path))
    assert checks["tmde"].status is Status.FAIL
    assert "connection refused" in checks["tmde"].detail


async def test_tmde_slow_warns_and_unsynchronised_clock_warns(agent: FakeEcsAgent, tmp_path: Path) -> None:
    agent.delay = 0.6
    agent.task["Containers"][0]["ClockDrift"]["ClockSynchronizationStatus"] = "NOT_SYNCHRONIZED"
    checks = await _run(ecs.checks, context(fargate_env("127.0.0.1", agent.port), tmp_path))
    assert checks["tmde"].status is Status.WARN
    assert checks["clock-drift"].status is Status.WARN
    assert "RequestTimeTooSkewed" in checks["clock-drift"].fix


# ---- credentials endpoint (FULL_URI shape; RELATIVE_URI is covered in the netns tests) ------


async def test_credentials_endpoint_with_token_passes(agent: FakeEcsAgent, tmp_path: Path) -> None:
    checks = await _run(credentials.checks, context(pod_identity_env(agent), tmp_path))
    assert checks["credentials-endpoint"].status is Status.PASS, checks["credentials-endpoint"]
    assert "key ****LE00, expires" in checks["credentials-endpoint"].detail
    assert checks["credentials-token-file"].status is Status.SKIP


async def test_token_file_readable_and_unreadable(agent: FakeEcsAgent, tmp_path: Path) -> None:
    env = pod_identity_env(agent)
    del env["AWS_CONTAINER_AUTHORIZATION_TOKEN"]
    token_file = tmp_path / "token"
    token_file.write_text(AUTH_TOKEN + "\n")
    env["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"] = str(token_file)
    checks = await _run(credentials.checks, context(env, tmp_path))
    assert checks["credentials-endpoint"].status is Status.PASS
    assert checks["credentials-token-file"].status is Status.PASS
    token_file.unlink()
    checks = await _run(credentials.checks, context(env, tmp_path))
    assert checks["credentials-endpoint"].status is Status.FAIL
    assert checks["credentials-token-file"].status is Status.FAIL
    assert "No such file" in checks["credentials-token-file"].detail


async def test_token_file_that_is_a_fifo_does_not_hang(agent: FakeEcsAgent, tmp_path: Path) -> None:
    env = pod_identity_env(agent)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    env["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"] = str(fifo)
    checks = await asyncio.wait_for(_run(credentials.checks, context(env, tmp_path)), 5)
    assert checks["credentials-token-file"].status is Status.FAIL
    assert "not a regular file" in checks["credentials-token-file"].detail


async def test_wrong_token_fails(agent: FakeEcsAgent, tmp_path: Path) -> None:
    env = {**pod_identity_env(agent), "AWS_CONTAINER_AUTHORIZATION_TOKEN": "wrong-token-value"}
    checks = await _run(credentials.checks, context(env, tmp_path))
    assert checks["credentials-endpoint"].status is Status.FAIL
    assert "HTTP 401" in checks["credentials-endpoint"].detail


@pytest.mark.parametrize(("lifetime", "status"), [(-120, Status.FAIL), (600, Status.WARN)])
async def test_expired_and_expiring_credentials(
    agent: FakeEcsAgent, tmp_path: Path, lifetime: float, status: Status
) -> None:
    agent.credential_lifetime = lifetime
    checks = await _run(credentials.checks, context(pod_identity_env(agent), tmp_path))
    assert checks["credentials-endpoint"].status is status, checks["credentials-endpoint"]


async def test_full_uri_that_sdks_refuse_fails_without_connecting(tmp_path: Path) -> None:
    env = {"AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://10.1.2.3/creds"}
    checks = await _run(credentials.checks, context(env, tmp_path))
    assert checks["credentials-endpoint"].status is Status.FAIL
    # The very words `metamock serve` would refuse it with (one decision, ecs.client).
    assert "host '10.1.2.3' is not loopback, https" in checks["credentials-endpoint"].detail
    assert "`metamock serve` refuses this value" in checks["credentials-endpoint"].fix
    assert checks["credentials-token-file"].status is Status.SKIP


# ---- the server ------------------------------------------------------------------------------


def _creds(lifetime: float) -> Credentials:
    now = time.time()
    return Credentials(
        access_key_id="ASIAEXAMPLEEXAMPLE00",
        secret_access_key=Secret(SECRETS[0]),
        token=Secret(SECRETS[1]),
        expiration=now + lifetime,
        last_updated=now,
        role_arn="arn:aws:iam::111122223333:role/example-task-role",
    )


@asynccontextmanager
async def running_server(creds: Credentials | None, tokens: str = "optional") -> AsyncIterator[int]:
    agent = FakeEcsAgent()
    facts = TaskFacts(agent.task, agent.container, fetched_at=time.time())
    async with running_service(source=StaticSource(facts, creds), tokens=tokens, stop_notice=0) as service:
        yield service.port


async def test_server_checks_pass(tmp_path: Path) -> None:
    async with running_server(_creds(6 * 3600)) as port:
        checks = await _run(server.checks, context({}, tmp_path, port=port))
    assert [c.status for c in checks.values()] == [Status.PASS] * 5, checks
    assert checks["role"].detail == "serves role example-task-role"
    assert checks["tokens"].detail.startswith("optional")
    assert "key ****LE00" in checks["server-credentials"].detail


async def test_server_tokens_required_and_credentials_expiring(tmp_path: Path) -> None:
    async with running_server(_creds(600), tokens="required") as port:
        checks = await _run(server.checks, context({}, tmp_path, port=port))
    assert checks["tokens"].detail.startswith("required")
    assert checks["server-credentials"].status is Status.WARN


async def test_server_without_credentials_fails_role(tmp_path: Path) -> None:
    async with running_server(None) as port:
        checks = await _run(server.checks, context({}, tmp_path, port=port))
    assert checks["server"].status is Status.PASS
    assert checks["role"].status is Status.FAIL
    assert "--profile" in checks["role"].fix
    assert checks["server-credentials"].status is Status.SKIP


async def test_nothing_listening_fails_and_skips_the_rest(tmp_path: Path) -> None:
    checks = await _run(server.checks, context({}, tmp_path, port=free_port()))
    assert checks["server"].status is Status.FAIL
    assert checks["server"].detail.startswith("nothing listens on 127.0.0.1:")
    assert {c.status for n, c in checks.items() if n != "server"} == {Status.SKIP}


async def test_something_else_on_the_port_fails(tmp_path: Path, aiohttp_server: object) -> None:
    app = web.Application()
    server_ = await aiohttp_server(app)  # type: ignore[operator]
    checks = await _run(server.checks, context({}, tmp_path, port=server_.port))
    assert checks["server"].status is Status.FAIL
    assert "token PUT answered HTTP 405" in checks["server"].detail or "HTTP 404" in checks["server"].detail


async def test_hanging_server_fails_within_the_request_timeout(tmp_path: Path) -> None:
    async with hanging(("127.0.0.1", 0)) as (port,):
        started = time.monotonic()
        checks = await _run(server.checks, context({}, tmp_path, port=port))
        elapsed = time.monotonic() - started
    assert checks["server"].status is Status.FAIL
    assert "no answer within 1 s" in checks["server"].detail
    assert elapsed < 2


# ---- STS against moto_server -----------------------------------------------------------------


async def test_sts_passes_with_container_credentials(
    agent: FakeEcsAgent, tmp_path: Path, moto_server: str
) -> None:
    env = {**pod_identity_env(agent), "AWS_ENDPOINT_URL_STS": moto_server}
    checks = await _run(sts.checks, context(env, tmp_path))
    assert checks["sts"].status is Status.PASS, checks["sts"]
    assert checks["sts"].detail.startswith("credentials from the container endpoint are arn:aws:")


async def test_sts_passes_with_server_credentials(tmp_path: Path, moto_server: str) -> None:
    async with running_server(_creds(6 * 3600)) as port:
        env = {"AWS_ENDPOINT_URL_STS": moto_server}
        checks = await _run(sts.checks, context(env, tmp_path, port=port))
    assert checks["sts"].status is Status.PASS, checks["sts"]
    assert "from the server" in checks["sts"].detail


async def test_sts_skips_metamocks_own_fake_credentials(tmp_path: Path) -> None:
    """The local source without AWS credentials: AWS would refuse the key, so it is not asked."""
    fake = Credentials(
        access_key_id=local.FAKE_ACCESS_KEY_ID,
        secret_access_key=Secret(local.FAKE_SECRET_ACCESS_KEY),
        token=Secret(local.FAKE_TOKEN),
        expiration=time.time() + 6 * 3600,
        last_updated=time.time(),
        role_arn=f"arn:aws:iam::123456789012:role/{local.LOCAL_ROLE_NAME}",
    )
    async with running_server(fake) as port:
        env = {"AWS_ENDPOINT_URL_STS": f"http://127.0.0.1:{free_port()}"}  # would fail if asked
        checks = await _run(sts.checks, context(env, tmp_path, port=port))
    assert checks["sts"].status is Status.SKIP, checks["sts"]
    assert "metamock's own fake credentials" in checks["sts"].detail
    assert "--profile" in checks["sts"].fix


async def test_sts_unreachable_fails_and_offline_skips(agent: FakeEcsAgent, tmp_path: Path) -> None:
    env = {**pod_identity_env(agent), "AWS_ENDPOINT_URL_STS": f"http://127.0.0.1:{free_port()}"}
    checks = await _run(sts.checks, context(env, tmp_path))
    assert checks["sts"].status is Status.FAIL
    assert "--offline" in checks["sts"].fix
    checks = await _run(sts.checks, context(env, tmp_path, offline=True))
    assert checks["sts"].status is Status.SKIP


async def test_sts_hanging_endpoint_is_abandoned_in_time(agent: FakeEcsAgent, tmp_path: Path) -> None:
    async with hanging(("127.0.0.1", 0)) as (port,):
        env = {**pod_identity_env(agent), "AWS_ENDPOINT_URL_STS": f"http://127.0.0.1:{port}"}
        ctx = context(env, tmp_path)
        started = time.monotonic()
        checks = by_name(await run_checks(ctx, [g for g in GROUPS if g.names == ("sts",)]))
        elapsed = time.monotonic() - started
    assert checks["sts"].status is Status.FAIL
    assert elapsed < ctx.timeouts.group + 1


# ---- the runner ------------------------------------------------------------------------------


async def test_everything_hanging_finishes_within_the_group_timeout(tmp_path: Path) -> None:
    async with hanging(("127.0.0.1", 0), ("127.0.0.1", 0)) as (ecs_port, server_port):
        env = {
            **pod_identity_env(FakeEcsAgent()),
            "ECS_CONTAINER_METADATA_URI_V4": f"http://127.0.0.1:{ecs_port}/v4/x",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI": f"http://127.0.0.1:{ecs_port}/v1/credentials",
        }
        ctx = context(env, tmp_path, port=server_port)
        started = time.monotonic()
        checks = await run_checks(ctx)
        elapsed = time.monotonic() - started
    assert elapsed < ctx.timeouts.group + 1
    found = by_name(checks)
    for name in ("tmde", "credentials-endpoint", "server"):
        assert found[name].status is Status.FAIL, found[name]
    assert_no_secrets(checks)


async def test_a_group_that_hangs_or_breaks_is_reported_not_fatal(tmp_path: Path) -> None:
    async def hangs(ctx: DoctorContext, out: list[Check]) -> None:
        out.append(Check("first", Status.PASS, "done"))
        await asyncio.sleep(3600)

    async def breaks(ctx: DoctorContext, out: list[Check]) -> None:
        raise RuntimeError(SECRETS[0])

    ctx = context({}, tmp_path)
    checks = await run_checks(ctx, [Group(("first", "second"), hangs), Group(("boom",), breaks)])
    assert [(c.name, c.status) for c in checks] == [
        ("first", Status.PASS),
        ("second", Status.FAIL),
        ("boom", Status.FAIL),
    ]
    assert "no result within 4 s" in checks[1].detail
    assert checks[2].detail == "doctor error: RuntimeError"


async def test_runner_scrubs_secrets_a_check_let_through(tmp_path: Path) -> None:
    async def leaky(ctx: DoctorContext, out: list[Check]) -> None:
        out.append(Check("leaky", Status.WARN, f"saw {AUTH_TOKEN}", "x"))

    ctx = context({"AWS_CONTAINER_AUTHORIZATION_TOKEN": AUTH_TOKEN}, tmp_path)
    checks = await run_checks(ctx, [Group(("leaky",), leaky)])
    assert checks[0].detail == "saw ****"
