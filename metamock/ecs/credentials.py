"""The credential cache: one shared upstream fetch, refreshed ahead of expiry in the background.

Invariants: at most one fetch is in flight, whoever asks (2,000 clients → 1 upstream call);
a client waits at most its own timeout; credentials are renewed when less than `refresh_before`
of life is left and kept (and served) through upstream failures until they truly expire; failures,
429s and credentials too close to expiry push the next attempt out with capped, jittered,
exponential backoff, so the ECS agent (40 req/s per task) never sees a storm.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from metamock.clock import Clock
from metamock.ecs.client import Throttled
from metamock.errors import UpstreamError
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
    ) -> None:
        self._fetch = fetch
        self._clock = clock
        self._sleep = sleep
        self.policy = policy or RefreshPolicy()
        p = self.policy
        rand = rand or random.Random()  # noqa: S311 - jitter, not secrets
        self._backoff = Backoff(p.backoff_base, p.throttled_base, p.backoff_cap, rand)
        self._on_change = on_change
        self._current: Credentials | None = None
        self._inflight: asyncio.Task[Credentials | None] | None = None
        self._not_before = float("-inf")  # monotonic: no fetch before this (backoff)
        self._loop_task: asyncio.Task[None] | None = None
        self._last_problem = ""
        self._closed = False
        self._waiters: list[asyncio.Future[None]] = []  # callers of within() on this fetch

    def current(self) -> Credentials | None:
        """The cached credentials while they are valid at all, else None."""
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

    def start(self) -> None:
        """Start the background refresh loop."""
        if self._loop_task is None and not self._closed:
            self._loop_task = asyncio.create_task(self._run(), name="metamock-ecs-credentials-refresh")

    async def close(self) -> None:
        """Cancel the loop and any fetch in flight, and wait for them to end."""
        self._closed = True
        tasks = [t for t in (self._loop_task, self._inflight) if t is not None]
        self._loop_task = self._inflight = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _shared_fetch(self, *, force: bool) -> asyncio.Task[Credentials | None] | None:
        # No await between the check and the assignment: this is what makes the fetch single.
        if self._inflight is not None and not self._inflight.done():
            return self._inflight
        if self._closed:
            return None
        if not force and self._clock.monotonic() < self._not_before:
            return None
        task = asyncio.create_task(self._fetch_once(), name="metamock-ecs-credentials-fetch")
        # Each fetch releases its own waiters, never those of a fetch started after it.
        waiters: list[asyncio.Future[None]] = []
        task.add_done_callback(lambda _: _release_all(waiters))
        self._inflight, self._waiters = task, waiters
        return task

    async def _fetch_once(self) -> Credentials | None:
        try:
            fresh = await self._fetch()
        except Throttled as exc:
            self._failed(str(exc), throttled=True)
            return None
        except UpstreamError as exc:
            self._failed(str(exc), throttled=False)
            return None
        except Exception as exc:  # a bug must not kill the cache; its type is safe to log
            self._failed(f"unexpected {type(exc).__name__} while fetching credentials", throttled=False)
            return None
        return self._accept(fresh)

    def _accept(self, fresh: Credentials) -> Credentials | None:
        now = self._clock.time()
        life = fresh.expiration - now
        if life <= 0:
            self._failed(f"upstream answered credentials that expired {-life:.0f} s ago", throttled=False)
            return None
        old = self._current
        if old is None or (old.access_key_id, old.expiration) != (fresh.access_key_id, fresh.expiration):
            self._current = fresh
            log.info("credentials %s obtained, valid for %.0f s", key_hint(fresh.access_key_id), life)
            if self._on_change is not None:
                notify(self._on_change)
        if self._last_problem:
            log.info("credentials upstream recovered")
            self._last_problem = ""
        if life >= self.policy.refresh_before:
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
        return max(0.0, creds.expiration - self._clock.time() - self.policy.refresh_before)

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


def _release_all(waiters: list[asyncio.Future[None]]) -> None:
    for waiter in waiters:
        _release(waiter)


def notify(callback: Callable[[], None]) -> None:
    """Call a change listener; its failure must not stop the refreshes (logs the type only)."""
    try:
        callback()
    except Exception as exc:  # the listener's bug is logged, the cache goes on
        log.error("credentials change listener failed: %s", type(exc).__name__)
