"""The credential cache's policy parameters and its strict first fetch, over a scripted fetch."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from metamock.clock import ManualClock, SystemClock
from metamock.ecs.credentials import CredentialCache, RefreshPolicy
from metamock.errors import SettingsError, UpstreamError
from metamock.secrets import Secret
from metamock.sources.base import Credentials
from tests.ecs_support import START, SteppedSleep

LOOP = "test-cache-refresh"
HOUR = 3600.0


class Upstream:
    """A fetch that answers what the test scripts: credentials `lifetime` long, or an error."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.calls = 0
        self.lifetime = 6 * HOUR
        self.error: Exception | None = None
        self.gate: asyncio.Event | None = None  # set: the fetch waits for it
        self.same = False  # answer the previous credentials again
        self.last: Credentials | None = None

    async def __call__(self) -> Credentials:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        if self.same and self.last is not None:
            return self.last
        now = self.clock.time()
        self.last = Credentials(
            f"ASIATESTCACHE{self.calls:07d}", Secret("s"), Secret("t"), now + self.lifetime, now
        )
        return self.last


@pytest.fixture
def upstream(clock: ManualClock) -> Upstream:
    return Upstream(clock)


MakeCache = Callable[..., CredentialCache]


@pytest.fixture
async def make_cache(
    upstream: Upstream, clock: ManualClock, sleeper: SteppedSleep
) -> AsyncIterator[MakeCache]:
    caches: list[CredentialCache] = []

    def make(**kw: Any) -> CredentialCache:
        kw.setdefault("rand", random.Random(3))
        cache = CredentialCache(upstream, clock=clock, sleep=sleeper, name="test-cache", **kw)
        caches.append(cache)
        return cache

    yield make
    for cache in caches:
        await cache.close()


async def test_renew_every_fetches_again_before_the_expiry_asks(
    upstream: Upstream, make_cache: MakeCache, sleeper: SteppedSleep, clock: ManualClock
) -> None:
    # The local source's static keys: a synthetic 6 h expiry, re-dated every 4 h.
    changes: list[float] = []
    cache = make_cache(
        policy=RefreshPolicy(refresh_before=20 * 60, renew_every=4 * HOUR, max_sleep=1e9),
        on_change=lambda: changes.append(clock.time() - START),
    )
    assert await cache.load() is not None
    cache.start()
    assert await sleeper.wait_parked(LOOP) == pytest.approx(4 * HOUR)
    for n in range(1, 4):
        assert await sleeper.step(LOOP) == pytest.approx(4 * HOUR)
        assert upstream.calls == 1 + n
    assert changes == pytest.approx([0, 4 * HOUR, 8 * HOUR, 12 * HOUR])
    # The same answer again is no change, and still postpones the next fetch by renew_every
    # (until the expiry asks: with 2 h left, 1 h 40 min later).
    upstream.same = True
    assert await sleeper.step(LOOP) == pytest.approx(HOUR + 40 * 60)
    assert upstream.calls == 5
    assert len(changes) == 4


async def test_without_renew_every_only_the_expiry_decides(
    make_cache: MakeCache, sleeper: SteppedSleep
) -> None:
    cache = make_cache(policy=RefreshPolicy(max_sleep=1e9))
    await cache.load()
    cache.start()
    assert await sleeper.wait_parked(LOOP) == pytest.approx(5.5 * HOUR)


async def test_an_answer_with_exactly_refresh_before_left_backs_off(
    upstream: Upstream, make_cache: MakeCache, sleeper: SteppedSleep
) -> None:
    # "Renew when not more than refresh_before is left" on both sides: no zero-delay loop.
    upstream.lifetime = 20 * 60
    cache = make_cache(policy=RefreshPolicy(refresh_before=20 * 60, backoff_base=15, max_sleep=1e9))
    await cache.load()
    cache.start()
    assert 7.5 <= await sleeper.wait_parked(LOOP) <= 15
    assert upstream.calls == 1


async def test_reads_never_fetch(upstream: Upstream, make_cache: MakeCache, clock: ManualClock) -> None:
    changes: list[None] = []
    cache = make_cache(on_change=lambda: changes.append(None))
    first = await cache.load()
    clock.advance(5.9 * HOUR)  # due for renewal long ago; the loop is not running
    for _ in range(1000):
        assert cache.current() is first
    clock.advance(0.2 * HOUR)
    assert cache.current() is None  # never served expired
    assert upstream.calls == 1
    assert changes == [None]


async def test_load_raises_the_fetch_error_without_logging_a_retry(
    upstream: Upstream, make_cache: MakeCache, caplog: pytest.LogCaptureFixture
) -> None:
    upstream.error = SettingsError("--profile", "profile 'nope' not found")
    cache = make_cache()
    with pytest.raises(SettingsError, match=r"^--profile: profile 'nope' not found$"):
        await cache.load()
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    upstream.error = None
    assert (await cache.load()).access_key_id == "ASIATESTCACHE0000002"


async def test_load_of_an_expired_answer_is_an_upstream_error(
    upstream: Upstream, make_cache: MakeCache
) -> None:
    upstream.lifetime = -60
    with pytest.raises(UpstreamError, match="expired 60 s ago"):
        await make_cache().load()


async def test_load_joins_the_fetch_in_flight(upstream: Upstream, make_cache: MakeCache) -> None:
    upstream.gate = asyncio.Event()
    cache = make_cache()
    waiting = asyncio.create_task(cache.within(5.0))  # a client starts the shared fetch
    await asyncio.sleep(0)
    loading = asyncio.create_task(cache.load())
    await asyncio.sleep(0.01)
    upstream.gate.set()
    assert await loading is await waiting
    assert upstream.calls == 1


async def test_the_task_names_carry_the_cache_name(upstream: Upstream, make_cache: MakeCache) -> None:
    upstream.gate = asyncio.Event()
    cache = make_cache()
    cache.start()
    await asyncio.sleep(0.01)
    names = {t.get_name() for t in asyncio.all_tasks()}
    assert {"test-cache-refresh", "test-cache-fetch"} <= names
    upstream.gate.set()


async def test_the_expiry_is_announced_at_its_instant_while_a_fetch_hangs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Real time: a timer at the expiry, not the next request nor the end of the hung fetch.
    clock = SystemClock()
    upstream = Upstream(clock)  # type: ignore[arg-type]
    upstream.lifetime = 0.4
    heard: list[tuple[float, bool]] = []
    cache = CredentialCache(
        upstream,
        clock=clock,
        policy=RefreshPolicy(refresh_before=0.3),
        on_change=lambda: heard.append((clock.time(), cache.current() is not None)),
    )
    try:
        creds = await cache.load()
        upstream.gate = asyncio.Event()  # every later fetch hangs
        cache.start()
        await asyncio.sleep(0.7)
        assert upstream.calls == 2  # the loop is stuck in its renewal
        assert [ok for _, ok in heard] == [True, False]
        assert 0 <= heard[1][0] - creds.expiration < 0.1
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1
        assert warnings[0].startswith("credentials ****0001 expired unrenewed (no renewal yet)")
    finally:
        await cache.close()
