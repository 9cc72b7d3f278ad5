"""EcsSource end to end against the fake agent: start, background refreshes, failures, secrecy."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from metamock.clock import ManualClock
from metamock.errors import SettingsError, TaskDocumentError, UpstreamError
from metamock.sources.base import MetadataSource
from metamock.sources.ecs import EcsSource
from tests.ecs_support import (
    CREDS_LOOP,
    SECRETS,
    START,
    TMDE_LOOP,
    SteppedSleep,
    full_env,
    relative_env,
)
from tests.fakes.ecs_agent import AUTH_TOKEN, FakeEcsAgent

REPO = Path(__file__).resolve().parent.parent


MakeSource = Callable[..., EcsSource]


@pytest.fixture
async def make_source(
    agent: FakeEcsAgent, clock: ManualClock, sleeper: SteppedSleep
) -> AsyncIterator[MakeSource]:
    sources: list[EcsSource] = []

    def make(environ: dict[str, str] | None = None, **kw: Any) -> EcsSource:
        kw.setdefault("clock", clock)
        kw.setdefault("sleep", sleeper)
        kw.setdefault("credentials_host", f"127.0.0.1:{agent.port}")
        source = EcsSource(environ if environ is not None else relative_env(agent), **kw)
        sources.append(source)
        return source

    yield make
    for source in sources:
        await source.close()


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"secret {secret[:6]}... leaked"


def test_is_a_metadata_source() -> None:
    source: MetadataSource = EcsSource({"ECS_CONTAINER_METADATA_URI_V4": "http://127.0.0.1:9/v4/x"})
    assert source.on_change is None


def test_missing_metadata_uri() -> None:
    with pytest.raises(SettingsError, match="ECS_CONTAINER_METADATA_URI_V4"):
        EcsSource({"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/credentials/x"})


def test_reads_only_the_ecs_variables() -> None:
    env = {"ECS_CONTAINER_METADATA_URI_V4": "http://127.0.0.1:9/v4/x"}
    touched: list[str] = []

    class Recording(dict[str, str]):
        def get(self, key: str, default: Any = None) -> Any:
            touched.append(key)
            return super().get(key, default)

        def __getitem__(self, key: str) -> str:
            touched.append(key)
            return super().__getitem__(key)

    EcsSource(Recording(env))
    assert set(touched) <= {
        "ECS_CONTAINER_METADATA_URI_V4",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    }


async def test_start_fetches_documents_and_credentials(agent: FakeEcsAgent, make_source: MakeSource) -> None:
    source = make_source()
    await source.start()
    facts = source.facts()
    assert facts.task == agent.task
    assert facts.container == agent.container
    assert facts.fetched_at == START
    creds = source.credentials()
    assert creds is not None
    assert creds.role_arn == "arn:aws:iam::111122223333:role/example-task-role"
    assert await source.credentials_within(0.5) is creds
    assert agent.requests[0][1]["User-Agent"].startswith("metamock/")
    with pytest.raises(RuntimeError, match="twice"):
        await source.start()
    await source.close()
    await source.close()  # twice is fine
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("metamock-ecs")]
    calls = agent.calls["credentials"]
    assert await source.credentials_within(0.5) is creds  # still valid; no fetch after close
    assert agent.calls["credentials"] == calls


async def test_start_retries_then_succeeds(agent: FakeEcsAgent, make_source: MakeSource) -> None:
    agent.fail_count["task"] = 2
    source = make_source()
    await source.start()
    assert agent.calls["task"] == 3


@pytest.mark.parametrize("failure", ["500", "hang", "429"])
async def test_start_gives_up_with_one_line_naming_the_url(
    agent: FakeEcsAgent, make_source: MakeSource, failure: str
) -> None:
    if failure == "hang":
        agent.hang.add("container")
    else:
        agent.status["task"] = int(failure)
    source = make_source(start_deadline=1.0, request_timeout=0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(UpstreamError) as info:
        await source.start()
    assert loop.time() - started < 4.0  # the 1 s deadline, one request, and slack
    message = str(info.value)
    assert "\n" not in message
    assert f"127.0.0.1:{agent.port}/v4/" in message
    assert "gave up after" in message
    assert_no_secret(message)


async def test_a_malformed_task_document_fails_the_start_at_once(
    agent: FakeEcsAgent, make_source: MakeSource
) -> None:
    agent.task = agent.task | {"TaskARN": "arn:aws:ecs:us-west-2:bad"}
    source = make_source()
    with pytest.raises(TaskDocumentError) as info:
        await source.start()
    assert agent.calls["task"] == 1  # not retried: the agent would answer the same document
    assert isinstance(info.value, UpstreamError) and info.value.exit_code == 1
    assert str(info.value) == (
        "ECS task metadata (${ECS_CONTAINER_METADATA_URI_V4}/task): TaskARN "
        "'arn:aws:ecs:us-west-2:bad' is not arn:PARTITION:ecs:REGION:ACCOUNT:task/..."
    )
    assert source._session is None  # closed: no "Unclosed client session" at exit


async def test_a_malformed_container_document_is_named(agent: FakeEcsAgent, make_source: MakeSource) -> None:
    agent.container = agent.container | {"Networks": {"not": "a list"}}
    with pytest.raises(TaskDocumentError, match=r"^ECS container metadata .*: Networks is an object"):
        await make_source().start()


async def test_a_malformed_document_later_keeps_the_last_good_one(
    agent: FakeEcsAgent, make_source: MakeSource, sleeper: SteppedSleep, caplog: pytest.LogCaptureFixture
) -> None:
    source = make_source(task_refresh=300.0)
    await source.start()
    good = source.facts().task["TaskARN"]
    agent.task = agent.task | {"TaskARN": 7}
    retry = await sleeper.step(TMDE_LOOP)
    assert retry < 300.0
    assert source.facts().task["TaskARN"] == good
    assert "TaskARN 7 is not" in caplog.text


async def test_credential_failure_at_start_is_not_fatal(
    agent: FakeEcsAgent, make_source: MakeSource, sleeper: SteppedSleep, caplog: pytest.LogCaptureFixture
) -> None:
    agent.status["credentials"] = 503
    source = make_source()
    changes: list[int] = []
    source.on_change = lambda: changes.append(1)
    await source.start()
    assert source.credentials() is None
    assert await source.credentials_within(0.2) is None
    assert "no credentials yet" in caplog.text
    del agent.status["credentials"]
    await sleeper.step(CREDS_LOOP)
    assert source.credentials() is not None
    assert changes == [1]


async def test_tmde_refresh_calls_on_change_only_for_changes(
    agent: FakeEcsAgent, make_source: MakeSource, sleeper: SteppedSleep
) -> None:
    source = make_source(task_refresh=300.0)
    changes: list[int] = []
    await source.start()
    source.on_change = lambda: changes.append(1)
    assert await sleeper.wait_parked(TMDE_LOOP) == 300.0
    await sleeper.step(TMDE_LOOP)
    assert changes == []
    agent.task = agent.task | {"ClockDrift": {"ReferenceTimestamp": "2026-01-01T00:00:00Z"}}
    await sleeper.step(TMDE_LOOP)
    assert changes == []  # ClockDrift moves on every read: not a change of the task
    agent.task = agent.task | {"KnownStatus": "STOPPING"}
    await sleeper.step(TMDE_LOOP)
    assert changes == [1]
    assert source.facts().task["KnownStatus"] == "STOPPING"
    # Failures keep the last documents and retry sooner than the period.
    agent.status["task"] = 500
    retry = await sleeper.step(TMDE_LOOP)
    assert retry < 300.0
    assert source.facts().task["KnownStatus"] == "STOPPING"
    assert changes == [1]


async def test_a_failed_rebuild_is_named_after_its_cause_once(
    agent: FakeEcsAgent,
    make_source: MakeSource,
    sleeper: SteppedSleep,
    clock: ManualClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """New credentials or new task metadata: a failing listener is one ERROR naming which."""
    source = make_source(task_refresh=300.0)
    await source.start()

    def broken() -> None:
        raise ValueError("rebuild bug")

    source.on_change = broken
    await sleeper.wait_parked(CREDS_LOOP)
    clock.advance(7 * 3600)
    agent.rotate()
    caplog.set_level(logging.ERROR, logger="metamock")
    assert await source.credentials_within(3.0) is not None  # the cache goes on
    agent.task = agent.task | {"KnownStatus": "STOPPING"}
    await sleeper.step(TMDE_LOOP)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        "rebuilding the metadata tree after new credentials failed: ValueError: rebuild bug",
        "rebuilding the metadata tree after new task metadata failed: ValueError: rebuild bug",
    ]


async def test_two_thousand_clients_one_upstream_call(
    agent: FakeEcsAgent, make_source: MakeSource, sleeper: SteppedSleep, clock: ManualClock
) -> None:
    source = make_source()
    await source.start()
    await sleeper.wait_parked(CREDS_LOOP)  # the loop sleeps; only clients can cause a fetch now
    clock.advance(7 * 3600)  # the cached credentials have truly expired
    assert source.credentials() is None
    agent.rotate()
    agent.delay = 0.1
    before = agent.calls["credentials"]
    # A generous timeout: this test is about upstream calls (waiting is bounded elsewhere).
    results = await asyncio.gather(*(source.credentials_within(3.0) for _ in range(2000)))
    assert agent.calls["credentials"] - before == 1
    assert {c.access_key_id if c else None for c in results} == {"ASIAROTATED000000001"}


async def test_pod_identity_with_token_file(
    agent: FakeEcsAgent, make_source: MakeSource, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text(AUTH_TOKEN)
    env = full_env(agent, AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=str(token))
    source = make_source(env, role_name="pod-role")
    await source.start()
    creds = source.credentials()
    assert creds is not None
    assert creds.role_arn == "arn:aws:iam::111122223333:role/pod-role"
    assert creds.expiration == pytest.approx(START + 6 * 3600 + 0.123457)


async def test_without_credential_variables(agent: FakeEcsAgent, make_source: MakeSource) -> None:
    env = relative_env(agent)
    del env["AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"]
    source = make_source(env)
    await source.start()
    assert source.credentials() is None
    assert await source.credentials_within(0.5) is None
    assert agent.calls["credentials"] == 0


async def test_no_secret_in_logs_or_reprs(
    agent: FakeEcsAgent,
    make_source: MakeSource,
    sleeper: SteppedSleep,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    caplog.set_level(logging.DEBUG)
    agent.status["credentials"] = 429
    source = make_source()
    await source.start()
    await sleeper.step(CREDS_LOOP)
    agent.status["credentials"] = 500
    await sleeper.step(CREDS_LOOP)
    del agent.status["credentials"]
    agent.bad_json.add("credentials")
    await sleeper.step(CREDS_LOOP)
    agent.bad_json.clear()
    await sleeper.step(CREDS_LOOP)
    agent.rotate()
    await sleeper.step(CREDS_LOOP, advance=5.5 * 3600)  # to the refresh point, 30 min before expiry
    creds = source.credentials()
    assert creds is not None
    assert creds.access_key_id == "ASIAROTATED000000001"
    # The Pod Identity shape too, with a token file that goes missing.
    token = tmp_path / "token"
    token.write_text(AUTH_TOKEN)
    pod = make_source(full_env(agent, AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=str(token)))
    await pod.start()
    token.unlink()
    await pod.close()
    texts = [caplog.text, repr(source), repr(creds), repr(source.endpoints), repr(pod.endpoints)]
    texts += [repr(r.args) for r in caplog.records]
    for text in texts:
        assert_no_secret(text)
    assert "HTTP 429" in caplog.text
    assert "****0001" in caplog.text  # the key hint: last four characters only


def test_importing_the_ecs_source_loads_no_aws_sdk() -> None:
    code = (
        "import sys, metamock.sources.ecs\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'boto3', 'botocore', 'aiobotocore'})\n"
        "print(bad)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"
