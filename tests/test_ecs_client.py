"""The ECS clients against the fake ECS agent on a loopback port: settings, shapes and failures."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from metamock.ecs.client import EcsClient, Endpoints, Throttled, parse_credentials
from metamock.errors import SettingsError, UpstreamError
from tests.ecs_support import SECRETS, START, full_env, relative_env, render
from tests.fakes.ecs_agent import AUTH_TOKEN, CRED_ID, FIXTURES, RELATIVE_URI, TASK_ID, FakeEcsAgent
from tests.golden_files import assert_golden

V4 = "ECS_CONTAINER_METADATA_URI_V4"
FULL = "AWS_CONTAINER_CREDENTIALS_FULL_URI"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def client(session: aiohttp.ClientSession, env: dict[str, str], timeout: float = 2.0) -> EcsClient:
    port = env[V4].split(":")[2].split("/")[0]
    endpoints = Endpoints.from_environ(env, credentials_host=f"127.0.0.1:{port}")
    return EcsClient(session, endpoints, timeout=timeout)


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"secret {secret[:6]}... leaked into {text!r}"


# ---- settings ----------------------------------------------------------------------------


def test_missing_metadata_uri_is_a_settings_error() -> None:
    with pytest.raises(SettingsError) as info:
        Endpoints.from_environ({"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": RELATIVE_URI})
    assert info.value.setting == V4


@pytest.mark.parametrize("value", ["169.254.170.2/v4/x", "ftp://169.254.170.2/v4", "http:///v4"])
def test_bad_metadata_uri_is_a_settings_error(value: str) -> None:
    with pytest.raises(SettingsError) as info:
        Endpoints.from_environ({V4: value})
    assert info.value.setting == V4


def test_relative_uri_must_be_a_path() -> None:
    with pytest.raises(SettingsError) as info:
        Endpoints.from_environ(
            {V4: "http://169.254.170.2/v4/x", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "v2/x"}
        )
    assert info.value.setting == "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"


def test_relative_uri_goes_to_169_254_170_2_and_is_never_shown() -> None:
    env = {V4: "http://169.254.170.2/v4/x", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": RELATIVE_URI}
    endpoints = Endpoints.from_environ(env)
    assert endpoints.credentials_url == f"http://169.254.170.2{RELATIVE_URI}"
    assert endpoints.credentials_label == "http://169.254.170.2/v2/credentials/****"
    assert CRED_ID not in repr(endpoints)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/creds",
        "http://127.9.9.9/creds",
        "http://[::1]:8080/creds",
        "http://localhost/creds",
        "http://169.254.170.2/v2/credentials/x",
        "http://169.254.170.23/v1/credentials",
        "http://[fd00:ec2::23]/v1/credentials",
        "https://credentials.example.com/role",
    ],
)
def test_full_uri_hosts_botocore_accepts(url: str) -> None:
    endpoints = Endpoints.from_environ({V4: "http://169.254.170.2/v4/x", FULL: url})
    assert endpoints.credentials_url == url


@pytest.mark.parametrize(
    "url",
    [
        "http://credentials.example.com/role",
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/r",
        "http://10.0.0.1/creds",
        "http://[fd00:ec2::254]/creds",
        "ftp://127.0.0.1/creds",
        "http://user:hunter2@evil.example.com/creds?sig=abc",
    ],
)
def test_full_uri_hosts_botocore_refuses(url: str) -> None:
    with pytest.raises(SettingsError) as info:
        Endpoints.from_environ({V4: "http://169.254.170.2/v4/x", FULL: url})
    assert info.value.setting == FULL
    assert "hunter2" not in str(info.value)
    assert "sig=abc" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "label"),
    [
        (f"http://127.0.0.1:8080/v2/credentials/{CRED_ID}", "http://127.0.0.1:8080/v2/credentials/****"),
        (f"http://127.0.0.1:8080/creds/{CRED_ID}/role", "http://127.0.0.1:8080/creds/****"),
        (f"https://creds.example.com/get?id={CRED_ID}", "https://creds.example.com/****"),
        (f"http://user:{CRED_ID}@localhost/x", "http://localhost/****"),
        ("http://169.254.170.23/v1/credentials", "http://169.254.170.23/v1/****"),
        (f"http://localhost/{CRED_ID}", "http://localhost/****"),
    ],
)
def test_full_uri_is_masked_as_relative_is(url: str, label: str) -> None:
    # One masking for both variables: the credential id may sit anywhere in a FULL_URI.
    endpoints = Endpoints.from_environ({V4: "http://169.254.170.2/v4/x", FULL: url})
    assert endpoints.credentials_url == url
    assert endpoints.credentials_label == label
    assert CRED_ID not in repr(endpoints)


async def test_full_uri_errors_never_show_the_credential_id(session: aiohttp.ClientSession) -> None:
    env = {V4: "http://127.0.0.1:9/v4/x", FULL: f"http://127.0.0.1:9/v2/credentials/{CRED_ID}"}
    ecs = EcsClient(session, Endpoints.from_environ(env))
    with pytest.raises(UpstreamError, match="cannot connect") as info:
        await ecs.credentials(obtained_at=START)
    assert "127.0.0.1:9/v2/credentials/****" in str(info.value)
    assert_no_secret(str(info.value))


def test_relative_wins_over_full_and_token_file_over_token(tmp_path: Path) -> None:
    env = {
        V4: "http://169.254.170.2/v4/x",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": RELATIVE_URI,
        FULL: "http://not-even-checked.example.com/",  # botocore ignores FULL when RELATIVE is set
        "AWS_CONTAINER_AUTHORIZATION_TOKEN": "plain",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": str(tmp_path / "token"),
    }
    endpoints = Endpoints.from_environ(env)
    assert endpoints.credentials_url == f"http://169.254.170.2{RELATIVE_URI}"
    assert endpoints.credentials is not None
    assert endpoints.credentials.token_file == tmp_path / "token"
    assert "plain" not in repr(endpoints)


def test_no_credentials_variables_means_no_credentials_url() -> None:
    assert Endpoints.from_environ({V4: "http://169.254.170.2/v4/x"}).credentials_url is None


# ---- documents and credentials over HTTP ----------------------------------------------------


async def test_documents_and_relative_credentials(
    agent: FakeEcsAgent, session: aiohttp.ClientSession
) -> None:
    ecs = client(session, relative_env(agent))
    assert await ecs.task() == json.loads((FIXTURES / "fargate-task.json").read_text())
    assert (await ecs.container())["Name"] == agent.container["Name"]
    creds = await ecs.credentials(obtained_at=START)
    assert_golden("ecs/credentials-relative.json", render(creds))
    assert_no_secret(repr(creds))
    assert [path for path, _ in agent.requests] == [f"/v4/{TASK_ID}/task", f"/v4/{TASK_ID}", RELATIVE_URI]
    headers = agent.requests[-1][1]
    assert headers["Accept"] == "application/json"
    assert "Authorization" not in headers


@pytest.mark.parametrize("role_name", [None, "pod-role"])
async def test_pod_identity_shape_is_normalised(
    agent: FakeEcsAgent, session: aiohttp.ClientSession, role_name: str | None
) -> None:
    ecs = client(session, full_env(agent, AWS_CONTAINER_AUTHORIZATION_TOKEN=AUTH_TOKEN))
    creds = await ecs.credentials(obtained_at=START, role_name=role_name, partition="aws")
    # RFC3339Nano "...:00.123456789Z" became epoch seconds.
    assert creds.expiration == pytest.approx(START + 6 * 3600 + 0.123457)
    assert_golden(f"ecs/credentials-pod-identity-{role_name or 'no-role'}.json", render(creds))
    assert agent.requests[-1][1]["Authorization"] == AUTH_TOKEN


def test_parse_credentials_shapes() -> None:
    base = json.loads((FIXTURES / "credentials.json").read_text())
    creds = parse_credentials(base, obtained_at=START, role_name="ignored-when-arn-present")
    assert creds.role_arn == base["RoleArn"]
    pod = {k: v for k, v in base.items() if k != "RoleArn"} | {"AccountId": "111122223333"}
    assert parse_credentials(pod, obtained_at=START, role_name="r", partition="aws-cn").role_arn == (
        "arn:aws-cn:iam::111122223333:role/r"
    )
    for field in ("AccessKeyId", "SecretAccessKey", "Token", "Expiration"):
        with pytest.raises(ValueError, match=field):
            parse_credentials({k: v for k, v in base.items() if k != field}, obtained_at=START)
    with pytest.raises(ValueError, match="Expiration"):
        parse_credentials(base | {"Expiration": "tomorrow"}, obtained_at=START)


async def test_token_file_is_read_on_every_fetch(
    agent: FakeEcsAgent, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    token_file = tmp_path / "eks-pod-identity-token"
    token_file.write_text("stale-jwt\n")
    env = full_env(
        agent,
        AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=str(token_file),
        AWS_CONTAINER_AUTHORIZATION_TOKEN="also-wrong",  # the file wins, as in botocore
    )
    ecs = client(session, env)
    with pytest.raises(UpstreamError, match="HTTP 401") as info:
        await ecs.credentials(obtained_at=START)
    assert_no_secret(str(info.value))
    token_file.write_text(AUTH_TOKEN + "\n")  # rotated by the kubelet; final newline trimmed
    creds = await ecs.credentials(obtained_at=START)
    assert creds.access_key_id == agent.base_credentials["AccessKeyId"]
    sent = [h.get("Authorization") for p, h in agent.requests if p == "/v1/credentials"]
    assert sent == ["stale-jwt", AUTH_TOKEN]
    token_file.unlink()
    with pytest.raises(UpstreamError, match="AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"):
        await ecs.credentials(obtained_at=START)
    token_file.write_text("two\nlines")
    with pytest.raises(UpstreamError, match="not a legal header value"):
        await ecs.credentials(obtained_at=START)


async def test_plain_token_is_sent_when_there_is_no_file(
    agent: FakeEcsAgent, session: aiohttp.ClientSession
) -> None:
    ecs = client(session, full_env(agent, AWS_CONTAINER_AUTHORIZATION_TOKEN=AUTH_TOKEN))
    await ecs.credentials(obtained_at=START)
    assert agent.calls["unauthorized"] == 0


# ---- failures ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["task", "container", "credentials"])
async def test_500_is_an_upstream_error_naming_the_url(
    agent: FakeEcsAgent, session: aiohttp.ClientSession, kind: str
) -> None:
    agent.status[kind] = 500
    ecs = client(session, relative_env(agent))
    call = {"task": ecs.task, "container": ecs.container}.get(kind)
    with pytest.raises(UpstreamError) as info:
        await (call() if call else ecs.credentials(obtained_at=START))
    message = str(info.value)
    assert "HTTP 500" in message
    assert f"127.0.0.1:{agent.port}" in message
    assert "\n" not in message
    assert_no_secret(message)


async def test_503_carries_the_agent_code(agent: FakeEcsAgent, session: aiohttp.ClientSession) -> None:
    agent.status["credentials"] = 503
    with pytest.raises(UpstreamError, match=r"HTTP 503 Error$"):
        await client(session, relative_env(agent)).credentials(obtained_at=START)


async def test_429_is_throttled(agent: FakeEcsAgent, session: aiohttp.ClientSession) -> None:
    agent.status["credentials"] = 429
    with pytest.raises(Throttled, match="429"):
        await client(session, relative_env(agent)).credentials(obtained_at=START)


async def test_hang_times_out(agent: FakeEcsAgent, session: aiohttp.ClientSession) -> None:
    agent.hang.add("task")
    with pytest.raises(UpstreamError, match=r"no answer within 0.2 s"):
        await client(session, relative_env(agent), timeout=0.2).task()


async def test_bad_json_and_missing_fields(agent: FakeEcsAgent, session: aiohttp.ClientSession) -> None:
    ecs = client(session, relative_env(agent))
    agent.bad_json.add("credentials")
    with pytest.raises(UpstreamError, match="not JSON"):
        await ecs.credentials(obtained_at=START)
    agent.bad_json.clear()
    agent.base_credentials = {k: v for k, v in agent.base_credentials.items() if k != "Token"}
    with pytest.raises(UpstreamError, match="lacks Token") as info:
        await ecs.credentials(obtained_at=START)
    assert_no_secret(str(info.value))


async def test_connection_refused(session: aiohttp.ClientSession) -> None:
    env = {V4: "http://127.0.0.1:9/v4/x", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": RELATIVE_URI}
    ecs = EcsClient(session, Endpoints.from_environ(env, credentials_host="127.0.0.1:9"))
    with pytest.raises(UpstreamError, match="cannot connect") as info:
        await ecs.credentials(obtained_at=START)
    assert "127.0.0.1:9/v2/credentials/****" in str(info.value)
    assert_no_secret(str(info.value))


async def test_credentials_without_endpoint(session: aiohttp.ClientSession) -> None:
    ecs = EcsClient(session, Endpoints.from_environ({V4: "http://127.0.0.1:9/v4/x"}))
    with pytest.raises(UpstreamError, match="no AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        await ecs.credentials(obtained_at=START)
