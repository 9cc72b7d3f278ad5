"""The credential cache over the real client and the fake agent: single flight, refresh, backoff."""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from metamock.clock import ManualClock, iso_z
from metamock.ecs.client import EcsClient, Endpoints
from metamock.ecs.credentials import Backoff, CredentialCache, RefreshPolicy
from tests.ecs_support import CREDS_LOOP, START, SteppedSleep, relative_env
from tests.fakes.ecs_agent import FakeEcsAgent

HOUR = 3600.0
NO_CAP = RefreshPolicy(max_sleep=1e9)  # one sleep per refresh, so each test step is one iteration


MakeCache = Callable[..., CredentialCache]


@pytest.fixture
async def make_cache(
    agent: FakeEcsAgent, clock: ManualClock, sleeper: SteppedSleep
) -> AsyncIterator[MakeCache]:
    caches: list[CredentialCache] = []
    session = aiohttp.ClientSession()
    endpoints = Endpoints.from_environ(relative_env(agent), credentials_host=f"127.0.0.1:{agent.port}")

    def make(timeout: float = 2.0, **kw: Any) -> CredentialCache:
        ecs = EcsClient(session, endpoints, timeout=timeout)
        kw.setdefault("policy", NO_CAP)
        kw.setdefault("rand", random.Random(7))
        cache = CredentialCache(
            lambda: ecs.credentials(obtained_at=clock.time()), clock=clock, sleep=sleeper, **kw
        )
        caches.append(cache)
        return cache

    yield make
    for cache in caches:
        await cache.close()
    await session.close()


async def test_two_thousand_concurrent_waiters_make_one_upstream_call(
    agent: FakeEcsAgent, make_cache: MakeCache
) -> None:
    cache = make_cache()
    agent.delay = 0.2  # every caller arrives while the one fetch is in flight
    # A generous timeout: this test is about upstream calls (waiting is bounded elsewhere).
    results = await asyncio.gather(*(cache.within(3.0) for _ in range(2000)))
    assert agent.calls["credentials"] == 1
    assert {c.access_key_id if c else None for c in results} == {"ASIAEXAMPLEEXAMPLE00"}
    # Later callers get the cached value without any upstream call.
    await asyncio.gather(*(cache.within(0.5) for _ in range(2000)))
    assert agent.calls["credentials"] == 1


async def test_callers_never_wait_longer_than_their_timeout(
    agent: FakeEcsAgent, make_cache: MakeCache
) -> None:
    cache = make_cache(timeout=10.0)  # the upstream request itself would wait far longer
    agent.hang.add("credentials")
    loop = asyncio.get_running_loop()
    started = loop.time()
    results = await asyncio.gather(*(cache.within(0.3) for _ in range(50)))
    assert loop.time() - started < 1.5  # 0.3 s plus slack for a loaded machine
    assert results == [None] * 50
    assert agent.calls["credentials"] == 1  # the hung fetch is shared, not repeated


async def test_refresh_ahead_of_expiry_and_rotation(
    agent: FakeEcsAgent, make_cache: MakeCache, sleeper: SteppedSleep, clock: ManualClock
) -> None:
    changes: list[str] = []

    def on_change() -> None:
        current = cache.current()
        assert current is not None
        changes.append(current.access_key_id)

    cache = make_cache(on_change=on_change)
    first = await cache.refresh()
    assert first is not None
    cache.start()
    # Sleeps until 30 minutes before the 6-hour expiry.
    assert await sleeper.wait_parked(CREDS_LOOP) == pytest.approx(5.5 * HOUR)
    agent.rotate()
    next_delay = await sleeper.step(CREDS_LOOP)
    rotated = cache.current()
    assert rotated is not None
    assert rotated.access_key_id == "ASIAROTATED000000001"
    assert rotated.expiration - clock.time() == pytest.approx(6 * HOUR, abs=1)
    assert next_delay == pytest.approx(5.5 * HOUR, abs=1)
    assert changes == ["ASIAEXAMPLEEXAMPLE00", "ASIAROTATED000000001"]
    # The same credentials again are not a change.
    await cache.refresh()
    assert len(changes) == 2
    assert agent.calls["credentials"] == 3


async def test_same_near_expiry_credentials_are_retried_with_backoff(
    agent: FakeEcsAgent, make_cache: MakeCache, sleeper: SteppedSleep, clock: ManualClock
) -> None:
    agent.credential_lifetime = None  # the agent keeps handing out the same credentials...
    agent.base_credentials["Expiration"] = iso_z(START + 20 * 60)  # ...with 20 minutes left
    cache = make_cache()
    assert await cache.refresh() is not None
    cache.start()
    delays = [await sleeper.wait_parked(CREDS_LOOP)]
    for _ in range(4):
        delays.append(await sleeper.step(CREDS_LOOP))
    assert all(0.5 <= d <= 60.0 for d in delays)
    assert delays == sorted(delays)  # growing backoff, not a tight loop
    assert agent.calls["credentials"] == 5
    assert cache.current() is not None  # still served: the upstream cannot renew them
    # Fresh credentials end the backoff and the next sleep aims at 30 minutes before expiry.
    agent.credential_lifetime = 6 * HOUR
    assert await sleeper.step(CREDS_LOOP) == pytest.approx(5.5 * HOUR, abs=1)


async def test_served_through_failures_until_they_truly_expire(
    agent: FakeEcsAgent, make_cache: MakeCache, sleeper: SteppedSleep, clock: ManualClock
) -> None:
    cache = make_cache()
    creds = await cache.refresh()
    assert creds is not None
    cache.start()
    await sleeper.wait_parked(CREDS_LOOP)
    agent.status["credentials"] = 500
    await sleeper.step(CREDS_LOOP)  # to 30 minutes before expiry: refresh fails
    for _ in range(20):
        assert cache.current() is creds
        assert await cache.within(0.5) is creds
        await sleeper.step(CREDS_LOOP)
    assert clock.time() < creds.expiration
    clock.advance(creds.expiration - clock.time())
    assert cache.current() is None
    assert await cache.within(0.5) is None  # past the backoff window: one more (failing) try
    calls = agent.calls["credentials"]
    # Within the new backoff window clients get None at once, without an upstream call.
    assert await cache.within(0.5) is None
    assert agent.calls["credentials"] == calls
    # The upstream comes back: the next attempt repairs it.
    del agent.status["credentials"]
    for _ in range(3):
        await sleeper.step(CREDS_LOOP)
        if cache.current() is not None:
            break
    assert cache.current() is not None


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_without_credentials_attempts_are_one_to_one_and_a_half_seconds_apart(
    agent: FakeEcsAgent, make_cache: MakeCache, sleeper: SteppedSleep, status: int
) -> None:
    # Nothing to serve: every gap is recovery time lost, so the gaps stay within 1..1.5 s (the
    # old exponential backoff to 60 s made credentials come back up to a minute late); a 429
    # waits the longest gap allowed. Clients in between add no upstream call.
    agent.status["credentials"] = status
    cache = make_cache()
    cache.start()
    delays = [await sleeper.wait_parked(CREDS_LOOP)]
    for _ in range(9):
        delays.append(await sleeper.step(CREDS_LOOP))
        assert await cache.within(0.5) is None
    assert all(1.0 <= d <= 1.5 for d in delays), delays
    if status == 429:
        assert delays == [1.5] * 10
    else:
        assert delays[-5:] == [1.5] * 5
    assert agent.calls["credentials"] == 10  # one call per attempt, none from waiting clients


async def test_with_valid_credentials_the_gaps_shrink_as_expiry_nears(
    agent: FakeEcsAgent, make_cache: MakeCache, sleeper: SteppedSleep, clock: ManualClock
) -> None:
    # The agent fails from 30 minutes before expiry: the backoff grows (to 60 s at most) but
    # no gap exceeds a tenth of the life left, so the attempts crowd towards the expiry
    # instead of jumping past it; the loop wakes at the expiry itself.
    cache = make_cache()
    creds = await cache.refresh()
    assert creds is not None
    cache.start()
    await sleeper.wait_parked(CREDS_LOOP)
    agent.status["credentials"] = 500
    delay = await sleeper.step(CREDS_LOOP)  # to 30 minutes before expiry: the first failure
    gaps: list[tuple[float, float]] = []  # (life left when sleeping, delay)
    while clock.time() < creds.expiration:
        left = creds.expiration - clock.time()
        gaps.append((left, delay))
        assert delay <= max(1.0, 0.1 * left) + 1e-9, (left, delay)
        assert delay <= min(60.0, left) or delay == 1.0
        delay = await sleeper.step(CREDS_LOOP)
    assert clock.time() == pytest.approx(creds.expiration, abs=1.0)
    late = [d for left, d in gaps if left < 120]
    assert late and max(late) <= 12.0
    assert gaps[-1][1] <= 1.0
    assert cache.current() is None
    assert delay <= 1.5  # the rest of the gap that straddled the expiry
    assert 1.0 <= await sleeper.step(CREDS_LOOP) <= 1.5  # expired: the recovery regime


async def test_credentials_are_back_within_one_and_a_half_seconds_of_recovery(
    agent: FakeEcsAgent, make_cache: MakeCache, sleeper: SteppedSleep, clock: ManualClock
) -> None:
    cache = make_cache()
    creds = await cache.refresh()
    assert creds is not None
    cache.start()
    await sleeper.wait_parked(CREDS_LOOP)
    agent.status["credentials"] = 500
    while cache.current() is not None:
        await sleeper.step(CREDS_LOOP)
    for _ in range(20):  # an outage of ~30 s after the expiry
        await sleeper.step(CREDS_LOOP)
    del agent.status["credentials"]  # the agent recovers now
    recovered = clock.time()
    while cache.current() is None:
        await sleeper.step(CREDS_LOOP)
        assert clock.time() - recovered <= 1.5
    assert cache.current() is not None


async def test_one_warning_at_expiry_and_one_info_when_back(
    agent: FakeEcsAgent,
    make_cache: MakeCache,
    sleeper: SteppedSleep,
    clock: ManualClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    changes: list[bool] = []
    caplog.set_level(logging.INFO, logger="metamock.ecs.credentials")
    cache: CredentialCache = make_cache(on_change=lambda: changes.append(cache.current() is not None))
    creds = await cache.refresh()
    assert creds is not None
    cache.start()
    await sleeper.wait_parked(CREDS_LOOP)
    agent.status["credentials"] = 500
    while clock.time() < creds.expiration:
        await sleeper.step(CREDS_LOOP)
    for _ in range(10):
        await sleeper.step(CREDS_LOOP)
    assert changes == [True, False]  # the listener heard of the expiry at once
    del agent.status["credentials"]
    while cache.current() is None:
        await sleeper.step(CREDS_LOOP)
    assert changes == [True, False, True]
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.levelno >= logging.INFO]
    url = f"container credentials http://127.0.0.1:{agent.port}/v2/credentials/****"
    assert [m for level, m in lines if level == "WARNING"] == [
        f"{url}: HTTP 500 Error; serving cached credentials (1800 s left); next attempt in 1.0 s",
        f"credentials ****LE00 expired unrenewed ({url}: HTTP 500 Error); the role paths answer 404 "
        "until the upstream answers (asking every 1.5 s at most)",
    ]
    infos = [m for level, m in lines if level == "INFO"]
    assert len(infos) == 2
    back = r"credentials \*\*\*\*LE00 obtained, valid for \d+ s \(back after \d+ s without credentials\)"
    assert re.fullmatch(back, infos[1]), infos[1]


async def test_an_expired_answer_is_warned_about_once(
    agent: FakeEcsAgent, make_cache: MakeCache, sleeper: SteppedSleep, caplog: pytest.LogCaptureFixture
) -> None:
    # The agent keeps answering credentials that expired: "expired N s ago" with N growing was a
    # new WARNING at every attempt.
    agent.credential_lifetime = None
    agent.base_credentials["Expiration"] = iso_z(START - 60)
    cache = make_cache()
    cache.start()
    await sleeper.wait_parked(CREDS_LOOP)
    for _ in range(10):
        await sleeper.step(CREDS_LOOP)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].startswith("upstream answered credentials that expired 60 s ago")


async def test_expired_answer_is_not_accepted(agent: FakeEcsAgent, make_cache: MakeCache) -> None:
    agent.credential_lifetime = None
    agent.base_credentials["Expiration"] = iso_z(START - 60)
    cache = make_cache()
    assert await cache.refresh() is None
    assert cache.current() is None


async def test_bad_answers_are_retried(
    agent: FakeEcsAgent, make_cache: MakeCache, sleeper: SteppedSleep
) -> None:
    agent.bad_json.add("credentials")
    cache = make_cache()
    cache.start()
    await sleeper.wait_parked(CREDS_LOOP)
    agent.bad_json.clear()
    await sleeper.step(CREDS_LOOP)
    assert cache.current() is not None


async def test_close_cancels_loop_and_inflight_fetch(agent: FakeEcsAgent, make_cache: MakeCache) -> None:
    agent.hang.add("credentials")
    cache = make_cache(timeout=30.0)
    cache.start()
    assert await cache.within(0.05) is None
    tasks = [t for t in asyncio.all_tasks() if t.get_name().startswith("metamock-ecs-credentials")]
    assert len(tasks) == 2
    await cache.close()
    assert all(t.done() for t in tasks)


def test_backoff_is_capped_and_jittered() -> None:
    backoff = Backoff(1.0, 5.0, 60.0, random.Random(1))
    delays = [backoff.next() for _ in range(50)]
    assert all(0.5 <= d <= 60.0 for d in delays)
    assert len(set(delays)) == len(delays)
    backoff.reset()
    assert backoff.next(throttled=True) >= 2.5


async def test_a_cancelled_waiter_does_not_disturb_the_others(
    agent: FakeEcsAgent, make_cache: MakeCache
) -> None:
    cache = make_cache()
    agent.delay = 0.2
    gone = asyncio.create_task(cache.within(3.0))
    stays = asyncio.create_task(cache.within(3.0))
    await asyncio.sleep(0.05)
    gone.cancel()  # a client that hung up
    creds = await stays
    assert creds is not None
    assert gone.cancelled()
    assert agent.calls["credentials"] == 1


async def test_a_failing_change_listener_does_not_stop_the_cache(
    agent: FakeEcsAgent, make_cache: MakeCache, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> None:
        raise RuntimeError("listener bug\nsecond line")

    caplog.set_level(logging.DEBUG, logger="metamock.ecs.credentials")
    cache = make_cache(on_change=broken)
    assert await cache.refresh() is not None
    # Named as what failed (the rebuild, not the credentials), with its one-line message.
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        "rebuilding the metadata tree after new credentials failed: RuntimeError: listener bug second line"
    ]
    assert errors[0].exc_info is None  # the traceback only at DEBUG
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG and r.exc_info]
    assert len(debug) == 1
    assert "listener bug" in str(debug[0].exc_info[1])  # type: ignore[index]
    agent.rotate()  # the cache goes on: the next change is taken (and reported) again
    assert (await cache.refresh()).access_key_id == "ASIAROTATED000000001"  # type: ignore[union-attr]
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 2
