"""The credential cache of every source: one shared upstream fetch, refreshed ahead of expiry.

Invariants: at most one fetch is in flight, whoever asks (2,000 clients → 1 upstream call);
a client waits at most its own timeout; reading never fetches, changes or notifies anything;
credentials are renewed when less than `refresh_before` of life is left (30 min by default) and
kept (and served) through upstream failures until they truly expire, never after; failures,
429s and credentials too close to expiry push the next attempt out with capped, jittered,
exponential backoff, so the ECS agent (40 req/s per task) never sees a storm.

A source supplies the fetch (the ECS credentials endpoint; the AWS chain, AssumeRole, or static
keys re-dated) and, where its upstream needs other numbers, a `RefreshPolicy`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from metamock.clock import Clock
from metamock.ecs.client import Throttled
from metamock.errors import MetamockError, UpstreamError
from metamock.secrets import key_hint
from metamock.sources.base import Credentials

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]
Fetch = Callable[[], Awaitable[Credentials]]


@dataclass(frozen=True)
class RefreshPolicy:
    """When to renew and how to back off. Seconds throughout."""

    refresh_before: float = 30 * 60  # renew when less life than this is left
    min_life: float = 15 * 60  # botocore extends (and warns about) anything closer to expiry
    backoff_base: float = 1.0
    throttled_base: float = 5.0  # a 429 means the task is over 40 req/s: step back further
    backoff_cap: float = 60.0
    max_sleep: float = 300.0  # recheck the wall clock at least this often (suspend, clock steps)
    # Fetch again at least this often whatever the expiry (None: by expiry only). The local
    # source's static keys have a synthetic expiry: this is when their fetch re-dates them.
    renew_every: float | None = None


class Backoff:
    """Capped exponential delays with equal jitter: never less than half the step."""

    def __init__(self, base: float, throttled_base: float, cap: float, rand: random.Random) -> None:
        self._base, self._throttled_base, self._cap = base, throttled_base, cap
        self._rand = rand
        self.attempt = 0

    def next(self, *, throttled: bool = False) -> float:
        base = self._throttled_base if throttled else self._base
        step = min(self._cap, base * (1 << min(self.attempt, 30)))
        self.attempt += 1
        return step / 2 + self._rand.uniform(0, step / 2)

    def reset(self) -> None:
        self.attempt = 0


class CredentialCache:
    """Serves the cached credentials and keeps them fresh with a single in-flight fetch."""

    def __init__(
        self,
        fetch: Fetch,
        *,
        clock: Clock,
        sleep: Sleep = asyncio.sleep,
        policy: RefreshPolicy | None = None,
        rand: random.Random | None = None,
        on_change: Callable[[], None] | None = None,
        name: str = "metamock-ecs-credentials",
    ) -> None:
        """`on_change` runs after each fetch that changed the credentials; `name` prefixes the
        names of the cache's tasks (`<name>-refresh`, `<name>-fetch`)."""
        self._fetch = fetch
        self._clock = clock
        self._sleep = sleep
        self.policy = policy or RefreshPolicy()
        p = self.policy
        rand = rand or random.Random()  # noqa: S311 - jitter, not secrets
        self._backoff = Backoff(p.backoff_base, p.throttled_base, p.backoff_cap, rand)
        self._on_change = on_change
        self._name = name
        self._current: Credentials | None = None
        self._fetched_at = float("-inf")  # wall clock: the last answer accepted (renew_every)
        self._inflight: asyncio.Task[Credentials | None] | None = None
        self._not_before = float("-inf")  # monotonic: no fetch before this (backoff)
        self._loop_task: asyncio.Task[None] | None = None
        self._last_problem = ""
        self._closed = False
        self._waiters: list[asyncio.Future[None]] = []  # callers of within() on this fetch

    def current(self) -> Credentials | None:
        """The cached credentials while they are valid at all, else None. A pure read."""
        creds = self._current
        if creds is None or creds.expiration <= self._clock.time():
            return None
        return creds

    async def within(self, timeout: float) -> Credentials | None:
        """Cached credentials at once; when none, join (or start) the shared fetch for `timeout`."""
        creds = self.current()
        if creds is not None:
            return creds
        if self._shared_fetch(force=False) is None:
            return None
        # One bare future per waiter, all released together when the fetch ends: O(n) for n
        # waiters (asyncio.wait on the shared task would add and remove n done-callbacks: O(n²)).
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        timer = loop.call_later(timeout, _release, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
        return self.current()

    async def refresh(self) -> Credentials | None:
        """One fetch now (joining any in flight), ignoring backoff; the valid result or None."""
        task = self._shared_fetch(force=True)
        if task is not None:
            await asyncio.wait({task})
        return self.current()

    async def load(self) -> Credentials:
        """One fetch now (joining any in flight) whose failure is raised to the caller, not
        logged and retried: for a source that must not start without credentials."""
        task = self._shared_fetch(force=True, strict=True)
        if task is None:
            raise UpstreamError("the credential cache is closed")
        # wait, not await: a caller cancelled mid-start leaves the fetch to close().
        await asyncio.wait({task})
        if task.cancelled():
            raise UpstreamError("the credential cache was closed while fetching")
        creds = task.result()  # the fetch's own error, when it was this strict one
        if creds is None:  # joined a lenient fetch that failed, or an expired answer
            raise UpstreamError(self._last_problem or "no credentials")
        return creds

    def start(self) -> None:
        """Start the background refresh loop."""
        if self._loop_task is None and not self._closed:
            self._loop_task = asyncio.create_task(self._run(), name=f"{self._name}-refresh")

    async def close(self) -> None:
        """Cancel the loop and any fetch in flight, and wait for them to end."""
        self._closed = True
        tasks = [t for t in (self._loop_task, self._inflight) if t is not None]
        self._loop_task = self._inflight = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _shared_fetch(self, *, force: bool, strict: bool = False) -> asyncio.Task[Credentials | None] | None:
        # No await between the check and the assignment: this is what makes the fetch single.
        if self._inflight is not None and not self._inflight.done():
            return self._inflight
        if self._closed:
            return None
        if not force and self._clock.monotonic() < self._not_before:
            return None
        task = asyncio.create_task(self._fetch_once(strict=strict), name=f"{self._name}-fetch")
        # Each fetch releases its own waiters, never those of a fetch started after it.
        waiters: list[asyncio.Future[None]] = []
        task.add_done_callback(lambda done: _settled(done, waiters))
        self._inflight, self._waiters = task, waiters
        return task

    async def _fetch_once(self, *, strict: bool) -> Credentials | None:
        """One fetch, accepted or failed; `strict` raises its error instead (see `load`)."""
        try:
            fresh = await self._fetch()
        except Exception as exc:
            if strict:
                raise
            if isinstance(exc, MetamockError):  # written to be one safe line
                self._failed(str(exc), throttled=isinstance(exc, Throttled))
            else:  # a bug must not kill the cache; its type is safe to log
                self._failed(f"unexpected {type(exc).__name__} while fetching credentials", throttled=False)
            return None
        return self._accept(fresh)

    def _accept(self, fresh: Credentials) -> Credentials | None:
        now = self._clock.time()
        life = fresh.expiration - now
        if life <= 0:
            self._failed(f"upstream answered credentials that expired {-life:.0f} s ago", throttled=False)
            return None
        self._fetched_at = now
        old = self._current
        if old is None or (old.access_key_id, old.expiration) != (fresh.access_key_id, fresh.expiration):
            self._current = fresh
            log.info("credentials %s obtained, valid for %.0f s", key_hint(fresh.access_key_id), life)
            if self._on_change is not None:
                notify(self._on_change, after="new credentials")
        if self._last_problem:
            log.info("credentials upstream recovered")
            self._last_problem = ""
        if life > self.policy.refresh_before:  # as _delay: "due" is "not more than that left"
            self._backoff.reset()
            self._not_before = float("-inf")
        else:
            # Same (or short-lived) credentials again: ask later, not in a tight loop.
            delay = self._backoff.next()
            self._not_before = self._clock.monotonic() + delay
            level = logging.WARNING if life < self.policy.min_life else logging.DEBUG
            log.log(level, "upstream credentials have only %.0f s left; asking again in %.1f s", life, delay)
        return self._current

    def _failed(self, problem: str, *, throttled: bool) -> None:
        delay = self._backoff.next(throttled=throttled)
        self._not_before = self._clock.monotonic() + delay
        # Warn once per kind of problem, then quietly: an agent down for hours is one line.
        level = logging.WARNING if problem != self._last_problem else logging.DEBUG
        self._last_problem = problem
        creds = self.current()
        kept = (
            f"serving cached credentials ({creds.expiration - self._clock.time():.0f} s left)"
            if creds
            else "no credentials to serve"
        )
        log.log(level, "%s; %s; next attempt in %.1f s", problem, kept, delay)

    def _delay(self) -> float:
        """Seconds until the loop should fetch again (0 = now)."""
        wait_backoff = self._not_before - self._clock.monotonic()
        if wait_backoff > 0:
            return wait_backoff
        creds = self.current()
        if creds is None:
            return 0.0
        now = self._clock.time()
        due = creds.expiration - now - self.policy.refresh_before
        if self.policy.renew_every is not None:
            age = max(0.0, now - self._fetched_at)  # a clock stepped back never postpones it
            due = min(due, self.policy.renew_every - age)
        return max(0.0, due)

    async def _run(self) -> None:
        while True:
            try:
                delay = self._delay()
                if delay > 0:
                    await self._sleep(min(delay, self.policy.max_sleep))
                    continue
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep refreshing whatever happened
                log.error("credential refresh loop: unexpected %s", type(exc).__name__)
                await self._sleep(self.policy.backoff_cap)


def _release(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _settled(task: asyncio.Task[Credentials | None], waiters: list[asyncio.Future[None]]) -> None:
    if not task.cancelled():
        task.exception()  # a strict fetch's error belongs to load(); never "never retrieved"
    for waiter in waiters:
        _release(waiter)


def one_line(exc: BaseException) -> str:
    """`Type: message` on one line, at most ~300 characters, for a log line or an error."""
    text = " ".join(str(exc).split()) or "no detail"
    return f"{type(exc).__name__}: {text[:300]}"


def notify(callback: Callable[[], None], *, after: str = "an upstream change") -> None:
    """Call a source's change listener (the service's tree rebuild) after `after`.

    Its failure must not stop the refreshes: it is logged as what it is, a failed rebuild, with
    the exception's one line (the tree holds secrets only as masked `Secret`s) and, at DEBUG,
    the traceback.
    """
    try:
        callback()
    except Exception as exc:  # the listener's bug is logged, the cache goes on
        log.error("rebuilding the metadata tree after %s failed: %s", after, one_line(exc))
        log.debug("traceback of the failed rebuild", exc_info=True)
