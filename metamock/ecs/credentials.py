"""The credential cache of every source: one shared upstream fetch, refreshed ahead of expiry.

Invariants: at most one fetch is in flight, whoever asks (2,000 clients → 1 upstream call);
a client waits at most its own timeout; reading never fetches, changes or notifies anything;
credentials are renewed when less than `refresh_before` of life is left (30 min by default) and
kept (and served) through upstream failures until they truly expire, never after.

Retries (after a failure, a 429 or credentials too close to expiry) are spaced by capped,
jittered, exponential backoff, bent by what is at stake:
- while valid credentials are served, a gap is at most `life_fraction` of their remaining life,
  so the gaps shrink as expiry nears instead of jumping past it;
- with none to serve (expired, or never had), a gap is at most `expired_retry` (1.5 s): the
  refresher (and any client, through `within`) reaches the upstream that often, so credentials
  are back within ~1.5 s of the upstream recovering (a 429 then waits exactly that long);
- a gap is never less than `min_gap` (1 s), whoever asks: one attempt per second at most, far
  below the ECS agent's limit of 40 req/s per task, however many clients there are.
The moment credentials expire unrenewed is one WARNING, from a timer at that instant (not the
next request), and the listener is told (the tree drops the role); their return is one INFO.

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
    # While credentials are valid, a retry waits at most this share of their remaining life.
    life_fraction: float = 0.1
    # With no valid credentials, retries are at most this far apart (the recovery time).
    expired_retry: float = 1.5
    # Retries are at least this far apart, however many clients ask (the bound on the rate).
    min_gap: float = 1.0
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
        self._last_problem = ""  # the last failure's text (load() raises it), "" when none
        self._last_kind = ""  # what decides "a new kind of problem" (a text with no numbers)
        # The last failed attempt (wall clock, its text), kept after a recovery: `metamock status`.
        self.last_error: tuple[float, str] | None = None
        self._short_warned: tuple[str, float] | None = None  # short-lived creds warned about
        self._expired: Credentials | None = None  # the credentials whose expiry was announced
        self._expiry_timer: asyncio.TimerHandle | None = None
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
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
            self._expiry_timer = None
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
            self._failed(
                f"upstream answered credentials that expired {-life:.0f} s ago",
                throttled=False,
                kind="expired answer",
            )
            return None
        self._fetched_at = now
        old = self._current
        expired, self._expired = self._expired, None
        # One INFO line whatever happened before: new credentials, the end of an outage, or both.
        back = ""
        if expired is not None:
            back = f" (back after {now - expired.expiration:.0f} s without credentials)"
        elif self._last_problem:
            back = " (upstream recovered)"
        if old is None or (old.access_key_id, old.expiration) != (fresh.access_key_id, fresh.expiration):
            self._current = fresh
            self._arm_expiry_timer()
            log.info("credentials %s obtained, valid for %.0f s%s", key_hint(fresh.access_key_id), life, back)
            if self._on_change is not None:
                notify(self._on_change, after="new credentials")
        elif back:
            log.info("credentials upstream recovered")
        self._last_problem = self._last_kind = ""
        if life > self.policy.refresh_before:  # as _delay: "due" is "not more than that left"
            self._backoff.reset()
            self._not_before = float("-inf")
        else:
            # Same (or short-lived) credentials again: ask later, not in a tight loop.
            delay = self._retry_delay(throttled=False)
            self._not_before = self._clock.monotonic() + delay
            # Warned once per credentials: the numbers change at each retry, the news does not.
            ident = (fresh.access_key_id, fresh.expiration)
            short = life < self.policy.min_life and self._short_warned != ident
            if short:
                self._short_warned = ident
            log.log(
                logging.WARNING if short else logging.DEBUG,
                "upstream credentials have only %.0f s left; asking again in %.1f s",
                life,
                delay,
            )
        return self._current

    def _failed(self, problem: str, *, throttled: bool, kind: str | None = None) -> None:
        """A failed attempt: back off, and warn once per `kind` of problem (default: its text;
        give one when the text carries numbers that change at each attempt)."""
        delay = self._retry_delay(throttled=throttled)
        self._not_before = self._clock.monotonic() + delay
        # Warn once per kind of problem, then quietly: an agent down for hours is one line.
        kind = kind or problem
        level = logging.WARNING if kind != self._last_kind else logging.DEBUG
        self._last_problem, self._last_kind = problem, kind
        self.last_error = (self._clock.time(), problem)
        creds = self.current()
        kept = (
            f"serving cached credentials ({creds.expiration - self._clock.time():.0f} s left)"
            if creds
            else "no credentials to serve"
        )
        log.log(level, "%s; %s; next attempt in %.1f s", problem, kept, delay)

    def _retry_delay(self, *, throttled: bool) -> float:
        """The gap before the next attempt after one that did not renew (see the module doc)."""
        p = self.policy
        step = self._backoff.next(throttled=throttled)
        creds = self.current()
        if creds is None:
            # Nothing to serve: every gap is recovery time lost. A 429 waits the longest gap
            # allowed (1.5 s, under 1 req/s: the agent allows 40 per task).
            delay = p.expired_retry if throttled else min(step, p.expired_retry)
        else:
            delay = min(step, (creds.expiration - self._clock.time()) * p.life_fraction)
        return max(p.min_gap, delay)

    def _delay(self) -> float:
        """Seconds until the loop should wake (0 = fetch now): for the next fetch, or for the
        expiry of the credentials served (to announce it at that instant)."""
        now = self._clock.time()
        creds = self.current()
        until_expiry = creds.expiration - now if creds is not None else float("inf")
        wait_backoff = self._not_before - self._clock.monotonic()
        if wait_backoff > 0:
            return min(wait_backoff, until_expiry)
        if creds is None:
            return 0.0
        due = creds.expiration - now - self.policy.refresh_before
        if self.policy.renew_every is not None:
            age = max(0.0, now - self._fetched_at)  # a clock stepped back never postpones it
            due = min(due, self.policy.renew_every - age)
        return max(0.0, min(due, until_expiry))

    def _arm_expiry_timer(self) -> None:
        """A timer at the expiry of the credentials served, so that it is announced at that
        instant even while the loop waits on a fetch (the loop also wakes then: a backstop
        for an injected clock and for a wall clock that stepped)."""
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
            self._expiry_timer = None
        creds = self._current
        if creds is None or self._closed:
            return
        delay = creds.expiration - self._clock.time()
        # +1 ms: asyncio may run a timer up to its clock resolution early.
        self._expiry_timer = asyncio.get_running_loop().call_later(max(0.0, delay) + 0.001, self._on_expiry)

    def _on_expiry(self) -> None:
        self._expiry_timer = None
        creds = self._current
        if creds is not None and creds.expiration > self._clock.time():
            self._arm_expiry_timer()  # woken early (the wall clock went back): not yet
            return
        self._announce_expiry()

    def _announce_expiry(self) -> None:
        """Once per credentials, when they expired unrenewed: one WARNING, and the listener is
        told (credentials() went from them to None: the tree drops the role)."""
        creds = self._current
        if creds is None or creds is self._expired or creds.expiration > self._clock.time():
            return
        self._expired = creds
        why = self._last_problem or "no renewal yet"
        log.warning(
            "credentials %s expired unrenewed (%s); the role paths answer 404 until the upstream "
            "answers (asking every %.1f s at most)",
            key_hint(creds.access_key_id),
            why,
            self.policy.expired_retry,
        )
        if self._on_change is not None:
            notify(self._on_change, after="the credentials expired")

    async def _run(self) -> None:
        while True:
            try:
                self._announce_expiry()
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
