"""The local source: task documents, the pruned AWS chain, AssumeRole against moto_server, fakes."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from metamock.clock import ManualClock, iso_z
from metamock.errors import SettingsError, UpstreamError
from metamock.sources import local
from metamock.sources.base import Credentials
from metamock.sources.local import LocalSource
from tests.ecs_support import SteppedSleep
from tests.golden_files import assert_golden
from tests.moto_fixture import moto_server, start_moto_server, stop_moto_server
from tests.servers import running_service

__all__ = ["moto_server"]  # a fixture, imported to be used by name

ROLE_ARN = "arn:aws:iam::123456789012:role/team/deploy-role"
BASE_KEY, BASE_SECRET = "AKIAMETAMOCKTESTBASE", "base/secret/from/the/profile/file/0000000"
LOOP = f"{local.CACHE_NAME}-refresh"  # the cache's renewal loop, parked in a SteppedSleep


def golden(name: str, actual: str) -> None:
    assert_golden(f"local/{name}", actual)


@pytest.fixture
def aws_home(tmp_path: Path) -> dict[str, str]:
    """An environ whose AWS files are empty tmp files (no credentials anywhere)."""
    return {
        "AWS_CONFIG_FILE": str(tmp_path / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "credentials"),
        "AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9/",
        "USER": "alice",
    }


@pytest.fixture
def profile_env(aws_home: dict[str, str]) -> dict[str, str]:
    """An environ whose shared credentials file has static keys in [default] and [dev]."""
    Path(aws_home["AWS_SHARED_CREDENTIALS_FILE"]).write_text(
        f"[default]\naws_access_key_id = {BASE_KEY}\naws_secret_access_key = {BASE_SECRET}\n"
        "[dev]\naws_access_key_id = AKIAMETAMOCKDEVPROF1\naws_secret_access_key = dev/secret\n"
    )
    return aws_home


@pytest.fixture
async def source_factory() -> AsyncIterator[Any]:
    made: list[LocalSource] = []

    def make(**kw: Any) -> LocalSource:
        made.append(LocalSource(**kw))
        return made[-1]

    yield make
    for src in made:
        await src.close()


def secrets_of(creds: Credentials) -> list[str]:
    return [creds.secret_access_key.reveal(), creds.token.reveal()]


# ---- task documents ------------------------------------------------------------------------


def test_embedded_sample_task_and_first_container() -> None:
    facts = LocalSource(environ={}).facts()
    assert facts.task["LaunchType"] == "FARGATE"
    assert facts.task["TaskARN"].startswith("arn:aws:ecs:us-west-2:111122223333:task/")
    assert facts.container is facts.task["Containers"][0]
    assert facts.container["Networks"][0]["MACAddress"] == "02:b7:20:19:72:39"


def test_given_task_document_is_used_and_copied(shared_fixtures: Path) -> None:
    doc = json.loads((shared_fixtures / "fargate-task.json").read_text())
    src = LocalSource(task_document=doc, environ={})
    assert src.facts().task == doc
    doc["TaskARN"] = "changed"
    assert src.facts().task["TaskARN"] != "changed"


BAD_TASKS: list[tuple[str, object]] = [
    ("list", []),
    ("empty", {}),
    ("no-networks", {"TaskARN": "arn:aws:ecs:eu-west-1:123456789012:task/c/1",
                     "AvailabilityZone": "eu-west-1a", "Containers": [{"Name": "a"}]}),
    ("empty-containers", {"TaskARN": "arn:aws:ecs:eu-west-1:123456789012:task/c/1",
                          "AvailabilityZone": "eu-west-1a", "Containers": []}),
    ("no-az", {"TaskARN": "arn:aws:ecs:eu-west-1:123456789012:task/c/1",
               "Containers": [{"Networks": [{}]}]}),
    ("bad-arn", {"TaskARN": "task-1", "AvailabilityZone": "eu-west-1a",
                 "Containers": [{"Networks": [{}]}]}),
]  # fmt: skip


def test_bad_task_documents_name_what_is_missing() -> None:
    lines = []
    for name, doc in BAD_TASKS:
        with pytest.raises(SettingsError) as info:
            LocalSource(task_document=doc, environ={})  # type: ignore[arg-type]
        assert info.value.setting == "--task-metadata"
        assert info.value.exit_code == 2
        lines.append(f"{name}: {info.value}\n")
    golden("task-errors.txt", "".join(lines))


def test_bad_role_arn_is_a_settings_error() -> None:
    with pytest.raises(SettingsError, match=r"^--role-arn: "):
        LocalSource(role_arn="deploy-role", environ={})
    assert LocalSource(role_arn=ROLE_ARN, environ={}).role_name == "deploy-role"


def test_session_name_is_metamock_user() -> None:
    assert local.session_name({"USER": "alice"}) == "metamock-alice"
    assert local.session_name({"LOGNAME": "bob smith"}) == "metamock-bob-smith"
    assert local.session_name({}) == "metamock-local"
    assert len(local.session_name({"USER": "x" * 200})) == 64


# ---- the AWS chain ---------------------------------------------------------------------------


async def test_static_keys_from_profile_file_in_environ(
    profile_env: dict[str, str], source_factory: Any
) -> None:
    clock = ManualClock()
    src = source_factory(environ=profile_env, clock=clock)
    await src.start()
    creds = src.credentials()
    assert creds is not None
    assert creds.access_key_id == BASE_KEY
    assert creds.secret_access_key.reveal() == BASE_SECRET
    assert creds.role_arn == "arn:aws:iam::111122223333:role/metamock-local"
    assert src.role_name == "metamock-local"
    assert creds.expiration - clock.time() >= 3600


async def test_named_profile_and_aws_profile_from_environ(
    profile_env: dict[str, str], source_factory: Any
) -> None:
    src = source_factory(environ=profile_env, profile="dev")
    await src.start()
    assert src.credentials().access_key_id == "AKIAMETAMOCKDEVPROF1"
    src = source_factory(environ={**profile_env, "AWS_PROFILE": "dev"})
    await src.start()
    assert src.credentials().access_key_id == "AKIAMETAMOCKDEVPROF1"


async def test_unknown_profile_is_a_settings_error(profile_env: dict[str, str]) -> None:
    src = LocalSource(environ=profile_env, profile="nope")
    with pytest.raises(SettingsError, match=r"^--profile: profile 'nope' not found"):
        await src.start()


async def test_unknown_aws_profile_names_the_variable(profile_env: dict[str, str]) -> None:
    src = LocalSource(environ={**profile_env, "AWS_PROFILE": "nope"})
    with pytest.raises(SettingsError, match=r"^AWS_PROFILE: profile 'nope' not found"):
        await src.start()


async def test_env_var_keys_come_from_environ_not_os_environ(
    aws_home: dict[str, str], source_factory: Any
) -> None:
    env = {**aws_home, "AWS_ACCESS_KEY_ID": "AKIAMETAMOCKENVVARS1", "AWS_SECRET_ACCESS_KEY": "s"}
    assert "AWS_ACCESS_KEY_ID" not in os.environ
    src = source_factory(environ=env)
    await src.start()
    assert src.credentials().access_key_id == "AKIAMETAMOCKENVVARS1"


async def test_static_expiration_rolls_and_stays_an_hour_ahead(
    profile_env: dict[str, str], source_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = ManualClock()
    sleeper = SteppedSleep(clock)
    src = source_factory(environ=profile_env, clock=clock, sleep=sleeper)
    changes: list[None] = []
    src.on_change = lambda: changes.append(None)
    await src.start()
    began = clock.time()
    # Re-dating is the cache's fetch of static keys: the chain is not asked again.
    monkeypatch.setattr(src, "_fetch_here", None)
    lowest = float("inf")
    while clock.time() - began < 40 * 25 * 60:  # many synthetic lifetimes
        await sleeper.step(LOOP)
        creds = src.credentials()
        assert creds is not None
        assert creds.access_key_id == BASE_KEY
        lowest = min(lowest, creds.expiration - clock.time())
    assert lowest >= 2 * 3600 - 1  # re-dated every 4 h: always >= 2 h (the docs promise 1 h)
    assert len(changes) == 1 + 4  # the first, then one re-date per 4 h in 16.7 h


async def test_reads_are_pure(profile_env: dict[str, str], source_factory: Any) -> None:
    """Reading never re-dates, fetches or notifies: that is the refresh loop's job."""
    clock = ManualClock()
    sleeper = SteppedSleep(clock)
    src = source_factory(environ=profile_env, clock=clock, sleep=sleeper)
    changes: list[None] = []
    src.on_change = lambda: changes.append(None)
    await src.start()
    await sleeper.wait_parked(LOOP)
    first = src.credentials()
    assert len(changes) == 1
    clock.advance(4.5 * 3600)  # past the re-date point (4 h): the loop has not run yet
    for _ in range(100):
        assert src.credentials() is first
    assert await src.credentials_within(0.1) is first  # valid ones: no fetch either
    clock.advance(1.5 * 3600)  # past the expiry (6 h)
    for _ in range(100):
        assert src.credentials() is None  # never served expired, and reading did not renew
    assert len(changes) == 1
    # Only a client that finds none starts (or joins) the one shared fetch.
    renewed = await src.credentials_within(1.0)
    assert renewed is not None
    assert renewed.expiration - clock.time() == pytest.approx(local.STATIC_LIFETIME)
    assert len(changes) == 2


async def test_one_rebuild_builds_one_tree(profile_env: dict[str, str]) -> None:
    """The service's rebuild reads the credentials; a read must not call it back (re-entry)."""
    from metamock.settings import Settings

    clock = ManualClock()
    sleeper = SteppedSleep(clock)
    src = LocalSource(environ=profile_env, clock=clock, sleep=sleeper)
    settings = Settings.load({"port": 0, "host": ["127.0.0.1"], "source": "local"}, profile_env)
    async with running_service(settings=settings, clock=clock, source=src) as service:
        await sleeper.wait_parked(LOOP)
        builds: list[int] = []
        depth = 0
        rebuild = service.rebuild

        def counted() -> None:
            nonlocal depth
            depth += 1
            builds.append(depth)
            try:
                rebuild()
            finally:
                depth -= 1

        service.rebuild = counted  # type: ignore[method-assign]
        src.on_change = counted
        clock.advance(4.5 * 3600)  # static keys due for re-dating (the old code did it in a read)
        service.rebuild()
        assert builds == [1]  # one tree, nesting depth 1
        assert await service.ensure_credentials(0.1) is False  # a read: no rebuild either
        assert builds == [1]
        await sleeper.step(LOOP)  # the cache re-dates them: one change, one rebuild
        assert builds == [1, 1]
        assert service.tree is not None


async def test_a_failed_rebuild_is_logged_as_one(
    profile_env: dict[str, str], source_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock()
    sleeper = SteppedSleep(clock)
    src = source_factory(environ=profile_env, clock=clock, sleep=sleeper)
    await src.start()

    def broken() -> None:
        raise ValueError(f"TaskARN is bad (and {src.credentials()!r})")

    src.on_change = broken
    caplog.set_level(logging.DEBUG, logger="metamock")
    await sleeper.step(LOOP)
    await sleeper.release(LOOP, advance=4 * 3600)  # the re-date: new credentials, failed rebuild
    await sleeper.wait_parked(LOOP)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    text = errors[0].getMessage()
    assert text.startswith("rebuilding the metadata tree after new credentials failed: ValueError: TaskARN")
    assert BASE_SECRET not in caplog.text
    assert src.credentials().expiration - clock.time() == local.STATIC_LIFETIME  # the cache went on


def process_profile(aws_home: dict[str, str], tmp_path: Path, *, fail_from: int = 0) -> float:
    """[default] with a credential_process; returns the time its credentials are dated from.

    Run n prints credentials that expire 30 * n minutes after that time (the first: in 30
    minutes), so a test's ManualClock started there sees whole, known lifetimes. The
    credential_process is the chain's simplest refreshable provider (as SSO and assume-role
    profiles are), and a real process. From run `fail_from` on (if set) it exits 1.
    """
    base = float(int(time.time()))
    script = tmp_path / "creds.py"
    script.write_text(
        "import json, pathlib, sys, time\n"
        f"p = pathlib.Path({str(tmp_path / 'n')!r})\n"
        "n = int(p.read_text()) + 1 if p.exists() else 1\n"
        "p.write_text(str(n))\n"
        f"if {fail_from} and n >= {fail_from}: sys.exit('no luck')\n"
        f"exp = time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime({base} + 1800 * n))\n"
        "print(json.dumps({'Version': 1, 'AccessKeyId': f'ASIAMETAMOCKPROC{n:04d}',\n"
        "  'SecretAccessKey': 'proc-secret', 'SessionToken': 'proc-token', 'Expiration': exp}))\n"
    )
    Path(aws_home["AWS_CONFIG_FILE"]).write_text(
        f"[default]\ncredential_process = {sys.executable} {script}\n"
    )
    return base


async def test_refreshable_chain_credentials_renew_ahead_of_expiry(
    aws_home: dict[str, str], tmp_path: Path, source_factory: Any
) -> None:
    clock = ManualClock(start=process_profile(aws_home, tmp_path))
    sleeper = SteppedSleep(clock)
    src = source_factory(environ=aws_home, clock=clock, sleep=sleeper)
    await src.start()
    first = src.credentials()
    assert first.access_key_id == "ASIAMETAMOCKPROC0001"
    assert first.expiration - clock.time() == 1800
    while first.expiration - clock.time() - await sleeper.wait_parked(LOOP) > 20 * 60:
        await sleeper.step(LOOP)  # not due yet: nothing runs
        assert src.credentials() is first
        assert (tmp_path / "n").read_text() == "1"
    await sleeper.release(LOOP)  # to 20 minutes before expiry: the renewal starts...
    assert src.credentials() is first  # ...and reads are answered from the cache meanwhile
    await sleeper.wait_parked(LOOP, timeout=20)
    assert first.expiration - clock.time() == pytest.approx(20 * 60, abs=1)
    second = src.credentials()
    assert second.access_key_id == "ASIAMETAMOCKPROC0002"
    assert second.expiration - clock.time() == 3600 - 600
    assert (tmp_path / "n").read_text() == "2"
    assert await sleeper.wait_parked(LOOP) == 300  # the next renewal 30 min away: no hurry


async def test_failed_chain_renewal_keeps_cached_and_backs_off(
    aws_home: dict[str, str],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    source_factory: Any,
) -> None:
    clock = ManualClock(start=process_profile(aws_home, tmp_path, fail_from=2))
    sleeper = SteppedSleep(clock)
    src = source_factory(environ=aws_home, clock=clock, sleep=sleeper)
    await src.start()
    first = src.credentials()
    while (tmp_path / "n").read_text() == "1":
        backoff = await step_slow(sleeper)
    assert src.credentials() is first
    failures = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(failures) == 1
    text = failures[0].getMessage()
    assert text.startswith("AWS credential chain: ")
    assert "serving cached credentials (1200 s left)" in text
    assert 7.5 <= backoff <= 15  # 15 s, jittered
    assert (tmp_path / "n").read_text() == "2"  # backing off: no second attempt right away
    assert await src.credentials_within(0.1) is first
    assert (tmp_path / "n").read_text() == "2"
    assert 15 <= await step_slow(sleeper) <= 30  # the second failure: doubled
    assert (tmp_path / "n").read_text() == "3"
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1  # once per problem
    clock.advance(first.expiration - clock.time())
    assert src.credentials() is None  # truly expired


async def step_slow(sleeper: SteppedSleep) -> float:
    """One loop iteration whose fetch runs botocore (or a process) on its thread: seconds."""
    await sleeper.release(LOOP)
    return await sleeper.wait_parked(LOOP, timeout=20)


# ---- no metadata providers in the chain -----------------------------------------------------


@pytest.fixture
async def counting_server(aiohttp_server: Any) -> Any:
    """A loopback server that counts every request: a stand-in container / IMDS endpoint."""
    calls: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        calls.append(f"{request.method} {request.path}")
        exp = iso_z(time.time() + 3600)
        body = {"AccessKeyId": "ASIACOUNTINGSERVER01", "SecretAccessKey": "x", "Token": "y",
                "Expiration": exp, "RoleArn": "arn:aws:iam::123456789012:role/host"}  # fmt: skip
        return web.json_response(body)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    server = await aiohttp_server(app)
    server.calls = calls
    return server


async def test_container_and_imds_providers_are_removed(
    aws_home: dict[str, str],
    counting_server: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    source_factory: Any,
) -> None:
    base = f"http://127.0.0.1:{counting_server.port}"
    env = {
        **aws_home,
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": f"{base}/creds",
        "AWS_EC2_METADATA_SERVICE_ENDPOINT": f"{base}/",
    }
    for name, value in env.items():  # also where botocore's own defaults would look
        monkeypatch.setenv(name, value)

    # Control: aiobotocore's stock chain does reach that server.
    from aiobotocore.credentials import create_credential_resolver
    from aiobotocore.session import AioSession

    stock = await create_credential_resolver(AioSession()).load_credentials()
    assert stock is not None
    assert stock.method == "container-role"
    assert counting_server.calls
    counting_server.calls.clear()

    src = source_factory(environ=env)
    with caplog.at_level(logging.WARNING, logger="metamock"):
        await src.start()
    assert src.credentials().access_key_id == local.FAKE_ACCESS_KEY_ID
    assert counting_server.calls == []


async def test_profile_credential_source_cannot_reach_metadata(
    aws_home: dict[str, str], counting_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {**aws_home, "AWS_CONTAINER_CREDENTIALS_FULL_URI": f"http://127.0.0.1:{counting_server.port}/c"}
    monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", env["AWS_CONTAINER_CREDENTIALS_FULL_URI"])
    Path(aws_home["AWS_CONFIG_FILE"]).write_text(
        f"[default]\nrole_arn = {ROLE_ARN}\ncredential_source = EcsContainer\n"
    )
    src = LocalSource(environ=env)
    with pytest.raises(UpstreamError, match=r"^AWS credential chain: "):
        await src.start()
    await src.close()
    assert counting_server.calls == []


# ---- fake credentials --------------------------------------------------------------------------


async def test_fake_credentials_and_their_single_warning(
    aws_home: dict[str, str], caplog: pytest.LogCaptureFixture, source_factory: Any
) -> None:
    clock = ManualClock()
    sleeper = SteppedSleep(clock)
    src = source_factory(environ=aws_home, clock=clock, sleep=sleeper)
    caplog.set_level(logging.DEBUG)
    await src.start()
    creds = src.credentials()
    golden("fake-credentials.json", json.dumps(imds_view(src, creds), indent=2) + "\n")
    # Read once: credentials configured later are not picked up (the docs say: restart).
    Path(aws_home["AWS_SHARED_CREDENTIALS_FILE"]).write_text(
        f"[default]\naws_access_key_id = {BASE_KEY}\naws_secret_access_key = {BASE_SECRET}\n"
    )
    began = clock.time()
    while clock.time() - began < 30 * 3600:  # re-dated again and again, never warned again
        await sleeper.step(LOOP)
        creds = src.credentials()
        assert creds.access_key_id == local.FAKE_ACCESS_KEY_ID
        assert creds.expiration - clock.time() >= 3600
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    for needle in ("FAKE", "--profile", "--role-arn", "aws configure"):
        assert needle in text


def imds_view(src: LocalSource, creds: Credentials) -> dict[str, str]:
    return {
        "RoleName": src.role_name,
        "RoleArn": str(creds.role_arn),
        "AccessKeyId": creds.access_key_id,
        "SecretAccessKey": creds.secret_access_key.reveal(),
        "Token": creds.token.reveal(),
        "LastUpdated": iso_z(creds.last_updated),
        "Expiration": iso_z(creds.expiration),
    }


# ---- AssumeRole against moto_server ---------------------------------------------------------


async def test_assume_role_against_moto(
    moto_server: str, profile_env: dict[str, str], source_factory: Any
) -> None:
    clock = ManualClock(start=time.time())
    src = source_factory(environ=profile_env, role_arn=ROLE_ARN, endpoint_url=moto_server, clock=clock)
    await src.start()
    creds = src.credentials()
    assert creds.access_key_id.startswith("ASIA")
    assert creds.access_key_id != BASE_KEY
    assert creds.role_arn == ROLE_ARN
    assert src.role_name == "deploy-role"
    assert 3500 < creds.expiration - clock.time() <= 3605
    assert await src.credentials_within(0.5) is creds


async def test_assume_role_renews_once_ahead_of_expiry(
    moto_server: str,
    profile_env: dict[str, str],
    caplog: pytest.LogCaptureFixture,
    source_factory: Any,
) -> None:
    caplog.set_level(logging.INFO, logger="metamock")
    clock = ManualClock(start=time.time())
    sleeper = SteppedSleep(clock)
    src = source_factory(
        environ=profile_env, role_arn=ROLE_ARN, endpoint_url=moto_server, clock=clock, sleep=sleeper
    )
    changes: list[None] = []
    src.on_change = lambda: changes.append(None)
    await src.start()
    first = src.credentials()
    while first.expiration - clock.time() - await sleeper.wait_parked(LOOP) > 20 * 60:
        await sleeper.step(LOOP)
        assert src.credentials() is first
    await sleeper.release(LOOP)  # 20 min left: renew now, in the background, once
    answers = await asyncio.gather(*(src.credentials_within(0.5) for _ in range(50)))
    assert all(a is first for a in answers)  # cached ones answer at once
    await sleeper.wait_parked(LOOP, timeout=20)
    second = src.credentials()
    assert second is not first
    assert second.expiration > first.expiration
    fetches = [r for r in caplog.records if "credentials via assume-role" in r.getMessage()]
    assert len(fetches) == 2
    assert len(changes) == 2


async def test_assume_role_profile_from_the_chain_renews(
    moto_server: str,
    profile_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    source_factory: Any,
) -> None:
    # An assume-role profile (role_arn + source_profile) is refreshable chain credentials.
    # botocore reads AWS_ENDPOINT_URL_STS from the process environment.
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", moto_server)
    Path(profile_env["AWS_CONFIG_FILE"]).write_text(
        f"[profile app]\nrole_arn = {ROLE_ARN}\nsource_profile = default\nregion = eu-west-1\n"
    )
    clock = ManualClock(start=time.time())
    sleeper = SteppedSleep(clock)
    src = source_factory(environ=profile_env, profile="app", clock=clock, sleep=sleeper)
    await src.start()
    first = src.credentials()
    assert first.access_key_id.startswith("ASIA")
    assert first.role_arn == "arn:aws:iam::111122223333:role/metamock-local"
    assert 3500 < first.expiration - clock.time() <= 3605
    await sleeper.release(LOOP, advance=45 * 60)  # 15 min left: the loop renews at once
    assert src.credentials() is first
    await sleeper.wait_parked(LOOP, timeout=20)
    second = src.credentials()
    assert second is not first
    assert second.expiration > first.expiration


async def test_assume_role_without_base_credentials(aws_home: dict[str, str]) -> None:
    src = LocalSource(environ=aws_home, role_arn=ROLE_ARN, endpoint_url="http://127.0.0.1:9")
    with pytest.raises(SettingsError, match=r"^--role-arn: no AWS credentials"):
        await src.start()


@pytest.fixture
def private_moto() -> Iterator[Any]:
    proc, url = start_moto_server()
    try:
        yield proc, url
    finally:
        stop_moto_server(proc)


async def test_renewal_failure_keeps_cached_until_expiry(
    private_moto: Any, profile_env: dict[str, str], source_factory: Any
) -> None:
    proc, url = private_moto
    clock = ManualClock(start=time.time())
    sleeper = SteppedSleep(clock)
    src = source_factory(environ=profile_env, role_arn=ROLE_ARN, endpoint_url=url, clock=clock, sleep=sleeper)
    await src.start()
    first = src.credentials()
    stop_moto_server(proc)  # STS goes away
    await sleeper.release(LOOP, advance=45 * 60)
    assert src.credentials() is first
    await sleeper.wait_parked(LOOP, timeout=30)  # the renewal failed
    assert src.credentials() is first  # still served: 15 minutes of life left
    clock.advance(16 * 60)
    assert src.credentials() is None  # truly expired now
    started = time.monotonic()
    assert await src.credentials_within(0.2) is None
    assert time.monotonic() - started < 1.0  # 0.2 s asked; slack for a loaded machine


async def test_credentials_within_never_waits_longer_than_timeout(
    profile_env: dict[str, str], source_factory: Any
) -> None:
    connections: list[asyncio.StreamWriter] = []

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        await reader.read(65536)
        await asyncio.sleep(30)

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        src = source_factory(environ=profile_env, role_arn=ROLE_ARN, endpoint_url=f"http://127.0.0.1:{port}")
        started = time.monotonic()
        answers = await asyncio.gather(*(src.credentials_within(0.3) for _ in range(100)))
        elapsed = time.monotonic() - started
        assert answers == [None] * 100
        assert elapsed < 1.0  # 0.3 s asked; slack for a loaded CI machine
        assert len(connections) <= 1  # one shared fetch, however many wait
        await src.close()
    finally:
        for writer in connections:  # the hanging handlers never close theirs
            writer.close()
        server.close()


# ---- secrets -----------------------------------------------------------------------------------


async def test_no_secret_in_logs_or_reprs(
    moto_server: str,
    profile_env: dict[str, str],
    caplog: pytest.LogCaptureFixture,
    source_factory: Any,
) -> None:
    caplog.set_level(logging.DEBUG)
    assumed = source_factory(environ=profile_env, role_arn=ROLE_ARN, endpoint_url=moto_server)
    chain = source_factory(environ=profile_env)
    empty = {k: v + ".missing" if k.endswith("_FILE") else v for k, v in profile_env.items()}
    fake = source_factory(environ=empty)
    secrets = [BASE_SECRET]
    shown = []
    for src in (assumed, chain, fake):
        await src.start()
        creds = src.credentials()
        secrets += [s for s in secrets_of(creds) if s]
        shown += [repr(src), repr(creds), str(creds), repr(src.facts())]
    text = "\n".join(shown + [r.getMessage() for r in caplog.records])
    assert "credentials via assume-role" in text  # the logs were captured
    for secret in secrets:
        assert secret not in text
