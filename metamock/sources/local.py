"""The local source: a sample (or given) task, and credentials from the laptop's AWS setup.

Credentials, first that applies: `role_arn` (STS AssumeRole with the chain's credentials),
else the standard AWS chain (`profile`), else obviously fake static ones and one warning.
The chain runs WITHOUT its `container-role` and `iam-role` providers: on an EC2 host they would
hand out the host's instance role, and behind metamock's own netfilter redirect they would ask
metamock itself and loop. boto3/aiobotocore are imported only inside functions.

Caching, renewal and backoff are the one `CredentialCache`'s (with `LOCAL_POLICY`); this module
is the fetch it calls.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from importlib import resources
from typing import Any

from metamock.clock import Clock, SystemClock
from metamock.ecs.credentials import CredentialCache, RefreshPolicy, Sleep, one_line
from metamock.ecs.documents import TASK_ARN, validate_task
from metamock.errors import SettingsError, UpstreamError
from metamock.secrets import Secret, key_hint
from metamock.sources.base import Credentials, TaskFacts
from metamock.threads import in_daemon_thread

log = logging.getLogger(__name__)

LOCAL_ROLE_NAME = "metamock-local"
FAKE_ACCESS_KEY_ID = "ASIAMETAMOCKFAKE0000"
FAKE_SECRET_ACCESS_KEY = "METAMOCK/FAKE/secret/not/valid/for/AWS/00"
FAKE_TOKEN = "METAMOCK-FAKE-SESSION-TOKEN-not-valid-for-AWS-use-profile-or-role-arn"

STATIC_LIFETIME = 6 * 3600.0  # synthetic expiration of static keys: IMDS always sends one
ASSUME_ROLE_SECONDS = 3600
REMOVED_PROVIDERS = ("container-role", "iam-role")

# The one credential cache, with this upstream's numbers:
# - temporary credentials are renewed 20 min before they expire (AssumeRole gives 1 h; the
#   cache's default 30 min would renew 30-min credential_process answers without a pause);
# - static keys are re-dated every 4 h, so their synthetic expiry is always >= 2 h away;
# - a failed renewal waits 15 s, doubling to 5 min (jittered): each attempt is a botocore
#   resolution or an STS call, and there is no 429 to tell STS throttling apart; with no valid
#   credentials left, every 15 s at most (an `aws sso login` is picked up within 15 s).
LOCAL_POLICY = RefreshPolicy(
    refresh_before=20 * 60.0,
    backoff_base=15.0,
    throttled_base=15.0,
    backoff_cap=300.0,
    expired_retry=15.0,
    renew_every=STATIC_LIFETIME - 2 * 3600.0,
)
CACHE_NAME = "metamock-local-credentials"  # the cache's tasks: <name>-refresh, <name>-fetch

_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/(?:[\w+=,.@-]+/)*([\w+=,.@-]{1,64})$")


def sample_task() -> dict[str, Any]:
    """The embedded task document: AWS's documented Fargate TMDE v4 example."""
    text = resources.files("metamock").joinpath("data", "sample-task.json").read_text("utf-8")
    doc: dict[str, Any] = json.loads(text)
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
        sleep: Sleep | None = None,
        policy: RefreshPolicy = LOCAL_POLICY,
    ) -> None:
        """`sleep` is the renewal loop's sleep (tests inject one driven by a ManualClock)."""
        task = validate_task(copy.deepcopy(task_document) if task_document is not None else sample_task())
        self._clock = clock or SystemClock()
        self._environ: Mapping[str, str] = os.environ if environ is None else environ
        self._profile = profile
        self._role_arn = role_arn
        self._role_name = role_name(role_arn) if role_arn else LOCAL_ROLE_NAME
        self._region = region
        self._endpoint_url = endpoint_url
        arn = TASK_ARN.match(task["TaskARN"])
        if arn is None:  # pragma: no cover - validate_task checked it
            raise SettingsError("--task-metadata", "bad TaskARN")
        partition, self._task_region, account = arn.groups()
        self._served_role_arn = role_arn or f"arn:{partition}:iam::{account}:role/{LOCAL_ROLE_NAME}"
        self._facts = TaskFacts(task=task, container=task["Containers"][0])
        self._static: _Fetched | None = None  # static or fake keys: read once, then re-dated
        self._resolved = False  # the chain answered once: never downgrade to fake ones later
        self._aws_session: Any = None
        self.on_change: Callable[[], None] | None = None
        self._cache = CredentialCache(
            self._fetch,
            clock=self._clock,
            sleep=sleep or asyncio.sleep,
            policy=policy,
            on_change=self._changed,
            name=CACHE_NAME,
        )

    def __repr__(self) -> str:
        return f"LocalSource(role={self._role_name!r}, profile={self._profile!r})"

    @property
    def role_name(self) -> str:
        return self._role_name

    async def start(self) -> None:
        """Resolve the first credentials (errors raise) and start the background renewal."""
        self._facts = replace(self._facts, fetched_at=self._clock.time())
        await self._cache.load()
        self._cache.start()

    def facts(self) -> TaskFacts:
        return self._facts

    def credentials(self) -> Credentials | None:
        """The cached credentials while valid: a pure read (renewal is the cache's loop)."""
        return self._cache.current()

    async def credentials_within(self, timeout: float) -> Credentials | None:
        return await self._cache.within(timeout)

    def last_error(self) -> tuple[float, str] | None:
        return self._cache.last_error

    async def close(self) -> None:
        await self._cache.close()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # ---- fetching ------------------------------------------------------------------------

    async def _fetch(self) -> Credentials:
        """The cache's fetch: static keys re-dated, else one resolution of the chain/AssumeRole."""
        fetched = self._static
        if fetched is None:
            fetched = await self._resolve()
        now = self._clock.time()
        return Credentials(
            access_key_id=fetched.access_key_id,
            secret_access_key=fetched.secret,
            token=fetched.token,
            expiration=fetched.expiration or now + STATIC_LIFETIME,
            last_updated=now,
            role_arn=self._served_role_arn,
        )

    async def _resolve(self) -> _Fetched:
        """Run the chain (and AssumeRole); fake keys when it finds nothing the first time."""
        # botocore does much synchronous work (parsing config and models, building endpoints,
        # signing): 0.2-0.5 s on a cold session, a stall for every IMDS client on the serving
        # loop. So: a worker thread with its own loop; a daemon, so a hung STS call never
        # holds up shutdown.
        fetched = await in_daemon_thread(
            lambda: asyncio.run(self._fetch_here()), name="metamock-aws-credentials"
        )
        if fetched is None:
            if self._resolved:  # never downgrade real credentials to fake ones mid-run
                raise UpstreamError("AWS credential chain: found no credentials any more")
            fetched = _Fetched(
                FAKE_ACCESS_KEY_ID, Secret(FAKE_SECRET_ACCESS_KEY), Secret(FAKE_TOKEN), None, "fake"
            )
            log.warning(
                "no AWS credentials found: serving obviously FAKE credentials that AWS will "
                "reject; for real ones pass --profile NAME or --role-arn ARN, or run "
                "`aws configure`"
            )
        else:
            log.info("credentials via %s (key %s)", fetched.method, key_hint(fetched.access_key_id))
        self._resolved = True
        if fetched.expiration is None:
            self._static = fetched
        return fetched

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
            raise UpstreamError(f"{step}: {one_line(exc)}") from exc

    def _session(self) -> Any:
        """An AioSession whose configuration comes from `environ`, not os.environ."""
        from aiobotocore.session import AioSession
        from botocore.configprovider import BOTOCORE_DEFAUT_SESSION_VARIABLES, ConfigChainFactory

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
