"""The `ecs` source: task facts from TMDE v4, role credentials from the container endpoint.

Imports only aiohttp (never boto3/aiobotocore): `serve` in ECS mode must be ready fast.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp

from metamock import __version__
from metamock.clock import Clock, SystemClock
from metamock.ecs.client import V4, EcsClient, Endpoints, Throttled
from metamock.ecs.credentials import Backoff, CredentialCache, RefreshPolicy, Sleep, notify
from metamock.ecs.documents import container_problem, task_problem
from metamock.errors import TaskDocumentError, UpstreamError
from metamock.sources.base import Credentials, TaskFacts

log = logging.getLogger(__name__)

# Fields that change on every read without the task changing (ClockDrift's reference timestamp).
_VOLATILE = frozenset({"ClockDrift"})


class EcsSource:
    """A MetadataSource over the ECS agent (or Fargate's) endpoints, read from `environ`."""

    on_change: Callable[[], None] | None

    def __init__(
        self,
        environ: Mapping[str, str],
        *,
        clock: Clock | None = None,
        role_name: str | None = None,
        task_refresh: float = 300.0,
        credentials_host: str | None = None,
        sleep: Sleep | None = None,
        request_timeout: float = 2.0,
        start_deadline: float = 10.0,
        policy: RefreshPolicy | None = None,
        rand: random.Random | None = None,
    ) -> None:
        """Validate the ECS variables now (SettingsError), connect nothing until `start()`.

        `credentials_host` replaces 169.254.170.2 for RELATIVE_URI (tests only); `sleep` is the
        background loops' sleep (tests inject one driven by a ManualClock).
        """
        self.endpoints = Endpoints.from_environ(environ, credentials_host=credentials_host)
        self.on_change = None
        self.role_name = role_name
        self._clock = clock or SystemClock()
        self._task_refresh = task_refresh
        self._sleep: Sleep = sleep or asyncio.sleep
        self._request_timeout = request_timeout
        self._start_deadline = start_deadline
        self._policy = policy or RefreshPolicy()
        self._rand = rand or random.Random()  # noqa: S311 - jitter, not secrets
        self._session: aiohttp.ClientSession | None = None
        self._client: EcsClient | None = None
        self._facts: TaskFacts | None = None
        self._cache: CredentialCache | None = None
        self._tmde_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Fetch the task documents (UpstreamError after ~10 s of failures), then credentials."""
        if self._session is not None or self._facts is not None:
            raise RuntimeError("EcsSource.start() called twice")
        # trust_env=False: a proxy from the environment must never see credential traffic.
        self._session = aiohttp.ClientSession(
            headers={"User-Agent": f"metamock/{__version__}"},
            connector=aiohttp.TCPConnector(limit=8),
            trust_env=False,
        )
        self._client = EcsClient(self._session, self.endpoints, timeout=self._request_timeout)
        try:
            self._facts = await self._first_facts()
        except BaseException:
            await self.close()
            raise
        if self.endpoints.credentials_url is not None:
            self._cache = CredentialCache(
                self._fetch_credentials,
                clock=self._clock,
                sleep=self._sleep,
                policy=self._policy,
                rand=self._rand,
                on_change=self._credentials_changed,
            )
            if await self._cache.refresh() is None:
                where = self.endpoints.credentials_label
                log.warning("no credentials yet from %s; retrying in the background", where)
            self._cache.start()
        else:
            log.info("no container credentials configured: the role paths will answer 404")
        self._tmde_task = asyncio.create_task(self._refresh_tmde(), name="metamock-ecs-tmde-refresh")

    def facts(self) -> TaskFacts:
        if self._facts is None:
            raise RuntimeError("EcsSource.facts() before start()")
        return self._facts

    def credentials(self) -> Credentials | None:
        return self._cache.current() if self._cache is not None else None

    async def credentials_within(self, timeout: float) -> Credentials | None:
        return await self._cache.within(timeout) if self._cache is not None else None

    def last_error(self) -> tuple[float, str] | None:
        return self._cache.last_error if self._cache is not None else None

    async def close(self) -> None:
        """Cancel the background tasks and close the HTTP session; safe to call twice."""
        tasks = [t for t in (self._tmde_task,) if t is not None]
        self._tmde_task = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._cache is not None:
            await self._cache.close()
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def _credentials_changed(self) -> None:
        # The cache calls this through its own notify(), which logs a failed rebuild.
        if self.on_change is not None:
            self.on_change()

    def _changed(self) -> None:
        """New task metadata: rebuild; a failure is logged and the refreshes go on."""
        if self.on_change is not None:
            notify(self.on_change, after="new task metadata")

    def _partition(self) -> str:
        arn = self._facts.task.get("TaskARN") if self._facts else None
        parts = arn.split(":") if isinstance(arn, str) else []
        return parts[1] if len(parts) > 5 and parts[1] else "aws"

    async def _fetch_credentials(self) -> Credentials:
        assert self._client is not None
        return await self._client.credentials(
            obtained_at=self._clock.time(), role_name=self.role_name, partition=self._partition()
        )

    async def _documents(self) -> tuple[dict[str, Any], dict[str, Any]]:
        assert self._client is not None
        # return_exceptions: a failure of one must not leave the other's error unretrieved.
        results = await asyncio.gather(self._client.task(), self._client.container(), return_exceptions=True)
        task, container = results
        if isinstance(task, BaseException):
            raise task
        if isinstance(container, BaseException):
            raise container
        # Checked here, at the boundary: translation trusts what it is given.
        problem = task_problem(task)
        if problem is not None:
            raise TaskDocumentError(f"ECS task metadata (${{{V4}}}/task): {problem}")
        problem = container_problem(container)
        if problem is not None:
            raise TaskDocumentError(f"ECS container metadata (${{{V4}}}): {problem}")
        return task, container

    async def _first_facts(self) -> TaskFacts:
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self._start_deadline
        delay, attempts = 0.25, 0
        while True:
            attempts += 1
            try:
                task, container = await self._documents()
            except TaskDocumentError:
                raise  # the agent would answer the same document again
            except UpstreamError as exc:
                if loop.time() + delay >= deadline:
                    raise UpstreamError(
                        f"{exc} (gave up after {attempts} attempts in {loop.time() - started:.1f} s)"
                    ) from None
                log.debug("task metadata not available yet: %s", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            return TaskFacts(task, container, self._clock.time())

    async def _refresh_tmde(self) -> None:
        backoff = Backoff(
            self._policy.backoff_base, self._policy.throttled_base, self._task_refresh, self._rand
        )
        delay = self._task_refresh
        while True:
            await self._sleep(delay)
            try:
                task, container = await self._documents()
            except UpstreamError as exc:
                delay = min(self._task_refresh, backoff.next(throttled=isinstance(exc, Throttled)))
                log.warning("%s; keeping the last task metadata, next attempt in %.1f s", exc, delay)
                continue
            backoff.reset()
            delay = self._task_refresh
            old = self.facts()
            self._facts = TaskFacts(task, container, self._clock.time(), old.extra)
            if _stable(task) != _stable(old.task) or _stable(container) != _stable(old.container):
                log.info("task metadata changed")
                self._changed()


def _stable(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in _VOLATILE}
