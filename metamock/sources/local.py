"""The local source: a sample (or given) task, and credentials from the laptop's AWS setup.

Credentials, first that applies: `role_arn` (STS AssumeRole with the chain's credentials),
else the standard AWS chain (`profile`), else obviously fake static ones and one warning.
The chain runs WITHOUT its `container-role` and `iam-role` providers: on an EC2 host they would
hand out the host's instance role, and behind metamock's own netfilter redirect they would ask
metamock itself and loop. boto3/aiobotocore are imported only inside functions.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from importlib import resources
from typing import Any

from metamock.clock import Clock, SystemClock
from metamock.errors import MetamockError, SettingsError, UpstreamError
from metamock.secrets import Secret, key_hint
from metamock.sources.base import Credentials, TaskFacts

log = logging.getLogger(__name__)

LOCAL_ROLE_NAME = "metamock-local"
FAKE_ACCESS_KEY_ID = "ASIAMETAMOCKFAKE0000"
FAKE_SECRET_ACCESS_KEY = "METAMOCK/FAKE/secret/not/valid/for/AWS/00"
FAKE_TOKEN = "METAMOCK-FAKE-SESSION-TOKEN-not-valid-for-AWS-use-profile-or-role-arn"

STATIC_LIFETIME = 6 * 3600.0  # synthetic expiration of static keys: IMDS always sends one
STATIC_ROLL_BELOW = 2 * 3600.0  # re-date before less than this is left, so >= 1 h always
REFRESH_AHEAD = 20 * 60.0  # renew temporary credentials this long before they expire
MIN_REFRESH_INTERVAL = 60.0  # never renew more often, even if AWS hands out short ones
RETRY_FIRST, RETRY_MAX = 15.0, 300.0  # back-off after a failed renewal
TICK = 60.0  # the background check's longest sleep (seconds of real time)
ASSUME_ROLE_SECONDS = 3600
REMOVED_PROVIDERS = ("container-role", "iam-role")

_TASK_ARN = re.compile(r"^arn:(aws[a-z-]*):ecs:([a-z0-9-]+):(\d{12}):task/\S+$")
_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/(?:[\w+=,.@-]+/)*([\w+=,.@-]{1,64})$")


def sample_task() -> dict[str, Any]:
    """The embedded task document: AWS's documented Fargate TMDE v4 example."""
    text = resources.files("metamock").joinpath("data", "sample-task.json").read_text("utf-8")
    doc: dict[str, Any] = json.loads(text)
    return doc


def validate_task(doc: object) -> dict[str, Any]:
    """Check the minimal shape translation needs; SettingsError names everything missing."""
    if not isinstance(doc, dict):
        raise SettingsError("--task-metadata", "not a TMDE v4 task document (a JSON object)")
    missing = [key for key in ("TaskARN", "AvailabilityZone") if not doc.get(key)]
    containers = doc.get("Containers")
    if not isinstance(containers, list) or not containers or not isinstance(containers[0], dict):
        missing.append("Containers[0]")
    elif not isinstance(containers[0].get("Networks"), list) or not containers[0]["Networks"]:
        missing.append("Containers[0].Networks")
    if missing:
        raise SettingsError("--task-metadata", f"task document lacks {', '.join(missing)}")
    if not isinstance(doc["TaskARN"], str) or not _TASK_ARN.match(doc["TaskARN"]):
        raise SettingsError(
            "--task-metadata",
            f"TaskARN {doc['TaskARN']!r} is not arn:PARTITION:ecs:REGION:ACCOUNT:task/...",
        )
    return doc


def role_name(role_arn: str) -> str:
    """The bare role name IMDS lists: the last path segment of the role ARN."""
    match = _ROLE_ARN.match(role_arn)
    if not match:
        raise SettingsError("--role-arn", f"{role_arn!r} is not arn:aws:iam::ACCOUNT:role/NAME")
    return match.group(1)


def session_name(environ: Mapping[str, str]) -> str:
    """`metamock-<user>`, trimmed to what STS accepts as a RoleSessionName."""
    user = environ.get("USER") or environ.get("LOGNAME") or environ.get("USERNAME") or "local"
    return "metamock-" + re.sub(r"[^\w+=,.@-]", "-", user)[:55]


@dataclass(frozen=True)
class _Fetched:
    """One answer of the credential chain or STS, before it becomes served Credentials."""

    access_key_id: str
    secret: Secret
    token: Secret
    expiration: float | None  # None: static keys (dated synthetically)
    method: str

    def __repr__(self) -> str:
        return f"_Fetched({key_hint(self.access_key_id)!r}, method={self.method!r})"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "no detail"
    return f"{type(exc).__name__}: {text[:300]}"


def _quiet_botocore() -> None:
    # At DEBUG botocore logs response bodies (STS returns the secret key and token there) and
    # signed request headers (the base session token): never let those reach a log line.
    for name in ("botocore", "aiobotocore"):
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.INFO:
            logger.setLevel(logging.INFO)


class LocalSource:
    """`MetadataSource` for laptops and CI: see the module docstring."""

    def __init__(
        self,
        *,
        task_document: dict[str, Any] | None = None,
        profile: str | None = None,
        role_arn: str | None = None,
        region: str | None = None,
        clock: Clock | None = None,
        environ: Mapping[str, str] | None = None,
        endpoint_url: str | None = None,
    ) -> None:
        task = validate_task(copy.deepcopy(task_document) if task_document is not None else sample_task())
        self._clock = clock or SystemClock()
        self._environ: Mapping[str, str] = os.environ if environ is None else environ
        self._profile = profile
        self._role_arn = role_arn
        self._role_name = role_name(role_arn) if role_arn else LOCAL_ROLE_NAME
        self._region = region
        self._endpoint_url = endpoint_url
        arn = _TASK_ARN.match(task["TaskARN"])
        if arn is None:  # pragma: no cover - validate_task checked it
            raise SettingsError("--task-metadata", "bad TaskARN")
        partition, self._task_region, account = arn.groups()
        self._served_role_arn = role_arn or f"arn:{partition}:iam::{account}:role/{LOCAL_ROLE_NAME}"
        self._facts = TaskFacts(task=task, container=task["Containers"][0])
        self._creds: Credentials | None = None
        self._static = False  # static or fake: re-dated locally, never re-fetched
        self._warned_fake = False
        self._next_attempt = 0.0
        self._backoff = RETRY_FIRST
        self._refreshing: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._aws_session: Any = None
        self.on_change: Callable[[], None] | None = None

    def __repr__(self) -> str:
        return f"LocalSource(role={self._role_name!r}, profile={self._profile!r})"

    @property
    def role_name(self) -> str:
        return self._role_name

    async def start(self) -> None:
        """Resolve the first credentials (errors raise) and start the background renewal."""
        self._facts = replace(self._facts, fetched_at=self._clock.time())
        self._accept(await self._fetch())
        self._ticker = asyncio.create_task(self._tick(), name="metamock-local-credentials")

    def facts(self) -> TaskFacts:
        return self._facts

    def credentials(self) -> Credentials | None:
        creds = self._creds
        now = self._clock.time()
        if creds is None:
            if now >= self._next_attempt:
                self._start_refresh()
            return None
        if self._static and creds.expiration - now < STATIC_ROLL_BELOW:
            creds = self._creds = replace(creds, expiration=now + STATIC_LIFETIME, last_updated=now)
            self._changed()
        elif not self._static and now >= self._next_attempt:
            self._start_refresh()
        return creds if creds.expiration > now else None

    async def credentials_within(self, timeout: float) -> Credentials | None:
        creds = self.credentials()
        if creds is not None or self._refreshing is None:
            return creds
        # shield: a client giving up must not cancel the one refresh every client shares.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._refreshing), timeout)
        return self.credentials()

    async def close(self) -> None:
        for task in (self._ticker, self._refreshing):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._ticker = self._refreshing = None

    # ---- renewal -------------------------------------------------------------------------

    async def _tick(self) -> None:
        while True:
            self.credentials()  # re-dates static keys, starts a due renewal
            wait = self._next_attempt - self._clock.time() if not self._static else TICK
            await asyncio.sleep(min(max(wait, 1.0), TICK))

    def _start_refresh(self) -> None:
        if self._refreshing is not None and not self._refreshing.done():
            return
        try:
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh())
        except RuntimeError:  # called outside the loop: the ticker will do it
            return

    async def _refresh(self) -> None:
        try:
            fetched = await self._fetch()
            if fetched is None:  # never downgrade real credentials to fake ones mid-run
                raise UpstreamError("the AWS credential chain found no credentials any more")
        except Exception as exc:  # a background task: anything unexpected must not escape
            now = self._clock.time()
            self._next_attempt = now + self._backoff
            self._backoff = min(self._backoff * 2, RETRY_MAX)
            detail = exc if isinstance(exc, MetamockError) else _one_line(exc)
            log.warning("credential renewal failed, keeping the cached ones: %s", detail)
            return
        self._accept(fetched)

    def _accept(self, fetched: _Fetched | None) -> None:
        now = self._clock.time()
        if fetched is None:
            fetched = _Fetched(
                FAKE_ACCESS_KEY_ID, Secret(FAKE_SECRET_ACCESS_KEY), Secret(FAKE_TOKEN), None, "fake"
            )
            if not self._warned_fake:
                self._warned_fake = True
                log.warning(
                    "no AWS credentials found: serving obviously FAKE credentials that AWS will "
                    "reject; for real ones pass --profile NAME or --role-arn ARN, or run "
                    "`aws configure`"
                )
        self._static = fetched.expiration is None
        expiration = fetched.expiration or now + STATIC_LIFETIME
        self._creds = Credentials(
            access_key_id=fetched.access_key_id,
            secret_access_key=fetched.secret,
            token=fetched.token,
            expiration=expiration,
            last_updated=now,
            role_arn=self._served_role_arn,
        )
        ahead = min(REFRESH_AHEAD, max(expiration - now, 0.0) / 2)
        self._next_attempt = max(expiration - ahead, now + MIN_REFRESH_INTERVAL)
        self._backoff = RETRY_FIRST
        if fetched.method != "fake":
            log.info("credentials via %s (key %s)", fetched.method, key_hint(fetched.access_key_id))
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # ---- fetching ------------------------------------------------------------------------

    async def _fetch(self) -> _Fetched | None:
        """One resolution, run on a worker thread with its own event loop.

        botocore does much synchronous work (parsing config and models, building endpoints,
        signing): 0.2-0.5 s on a cold session. On the serving loop that would stall every IMDS
        client. The thread is a daemon: a hung STS call never holds up shutdown.
        """
        loop = asyncio.get_running_loop()
        done: asyncio.Future[_Fetched | None] = loop.create_future()

        def settle(result: _Fetched | None, error: BaseException | None) -> None:
            if done.done():  # the waiter gave up (close(), cancellation)
                return
            if error is not None:
                done.set_exception(error)
            else:
                done.set_result(result)

        def work() -> None:
            try:
                outcome: tuple[_Fetched | None, BaseException | None] = (
                    asyncio.run(self._fetch_here()),
                    None,
                )
            except BaseException as exc:  # handed to the serving loop, which decides
                outcome = (None, exc)
            with contextlib.suppress(RuntimeError):  # the serving loop is already closed
                loop.call_soon_threadsafe(settle, *outcome)

        threading.Thread(target=work, name="metamock-aws-credentials", daemon=True).start()
        return await done

    async def _fetch_here(self) -> _Fetched | None:
        """The chain, then AssumeRole when a role is asked for; botocore errors translated."""
        from botocore.exceptions import BotoCoreError, ClientError, ProfileNotFound

        step = "AWS credential chain"
        try:
            session = self._aws_session or self._session()
            self._aws_session = session  # reused: its loaded models and config make renewals cheap
            base = await self._from_chain(session)
            if self._role_arn is None:
                return base
            if base is None:
                raise SettingsError(
                    "--role-arn",
                    "no AWS credentials to call AssumeRole with (pass --profile NAME or run `aws configure`)",
                )
            step = f"AssumeRole of {self._role_arn}"
            return await self._assume_role(session, base)
        except ProfileNotFound as exc:
            name = exc.kwargs.get("profile", self._profile)
            setting = "--profile" if self._profile else "AWS_PROFILE"
            raise SettingsError(setting, f"profile {name!r} not found") from exc
        except (BotoCoreError, ClientError, OSError, RuntimeError, ValueError, KeyError) as exc:
            raise UpstreamError(f"{step}: {_one_line(exc)}") from exc

    def _session(self) -> Any:
        """An AioSession whose configuration comes from `environ`, not os.environ."""
        from aiobotocore.session import AioSession
        from botocore.configprovider import BOTOCORE_DEFAUT_SESSION_VARIABLES, ConfigChainFactory

        _quiet_botocore()
        session = AioSession(profile=self._profile)
        chains = ConfigChainFactory(session=session, environ=self._environ)
        store = session.get_component("config_store")
        for name, (keys, env_vars, default, convert) in BOTOCORE_DEFAUT_SESSION_VARIABLES.items():
            chain = chains.create_config_chain(
                instance_name=name,
                env_var_names=env_vars,
                config_property_names=keys,
                default=default,
                conversion_func=convert,
            )
            store.set_config_provider(name, chain)
        return session

    def _resolver(self, session: Any) -> Any:
        """aiobotocore's default chain minus the providers that would reach metadata services."""
        from aiobotocore.credentials import create_credential_resolver

        resolver = create_credential_resolver(session, region_name=self._region)
        for method in REMOVED_PROVIDERS:
            resolver.remove(method)
        for provider in resolver.providers:
            if hasattr(provider, "environ"):  # the env-var provider
                provider.environ = self._environ
            if hasattr(provider, "_environ"):  # ec2-credentials-file, boto2 config
                provider._environ = self._environ
            sourcer = getattr(provider, "_credential_sourcer", None)
            if sourcer is not None:
                # `credential_source = EcsContainer | Ec2InstanceMetadata` in a profile would
                # reach the same two providers; botocore offers no public way to drop them.
                sourcer._providers = [p for p in sourcer._providers if p.METHOD not in REMOVED_PROVIDERS]
        return resolver

    async def _from_chain(self, session: Any) -> _Fetched | None:
        creds = await self._resolver(session).load_credentials()
        if creds is None:
            return None
        frozen = await creds.get_frozen_credentials()
        # botocore has no public accessor for a refreshable credential's expiry.
        expiry = getattr(creds, "_expiry_time", None)
        return _Fetched(
            access_key_id=frozen.access_key,
            secret=Secret(frozen.secret_key),
            token=Secret(frozen.token or ""),
            expiration=expiry.timestamp() if expiry is not None else None,
            method=str(getattr(creds, "method", "chain")),
        )

    async def _assume_role(self, session: Any, base: _Fetched) -> _Fetched:
        from aiobotocore.config import AioConfig

        region = self._region or session.get_config_variable("region") or self._task_region
        config = AioConfig(
            connect_timeout=5, read_timeout=10, retries={"total_max_attempts": 2, "mode": "standard"}
        )
        async with session.create_client(
            "sts",
            region_name=region,
            endpoint_url=self._endpoint_url,
            aws_access_key_id=base.access_key_id,
            aws_secret_access_key=base.secret.reveal(),
            aws_session_token=base.token.reveal() or None,
            config=config,
        ) as sts:
            answer = await sts.assume_role(
                RoleArn=self._role_arn,
                RoleSessionName=session_name(self._environ),
                DurationSeconds=ASSUME_ROLE_SECONDS,
            )
        creds = answer["Credentials"]
        return _Fetched(
            access_key_id=creds["AccessKeyId"],
            secret=Secret(creds["SecretAccessKey"]),
            token=Secret(creds["SessionToken"]),
            expiration=creds["Expiration"].timestamp(),
            method="assume-role",
        )
