"""Helpers for the ECS tests: a fake agent on port 0, a stepped sleep, and credential renderings."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from metamock.clock import ManualClock
from metamock.sources.base import Credentials
from tests.fakes.ecs_agent import AUTH_TOKEN, FakeEcsAgent, fargate_env

CREDS_LOOP = "metamock-ecs-credentials-refresh"
TMDE_LOOP = "metamock-ecs-tmde-refresh"
START = 1_700_000_000.0
SECRETS = (
    "exampleSecretKeyexampleSecretKeyexample0",
    "IQoJb3JpZ2luX2VjEXAMPLETOKENexampleTOKEN",
    "rotatedSecret",
    "rotatedToken",
    AUTH_TOKEN,
    "6e2b7c2a-1b6f-4a55-9c55-3f0f6a1b2c3d",  # the credential id in RELATIVE_URI
)


async def started_agent(clock: ManualClock, **kw: Any) -> FakeEcsAgent:
    agent = FakeEcsAgent(clock=clock, **kw)
    await agent.start("127.0.0.1", 0)
    return agent


def relative_env(agent: FakeEcsAgent) -> dict[str, str]:
    """What Fargate injects, with the metadata URI on the agent's loopback port."""
    return fargate_env("127.0.0.1", agent.port)


def full_env(agent: FakeEcsAgent, **extra: str) -> dict[str, str]:
    """The EKS Pod Identity shape: FULL_URI on loopback plus an authorization token."""
    env = relative_env(agent)
    del env["AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"]
    env["AWS_CONTAINER_CREDENTIALS_FULL_URI"] = f"http://127.0.0.1:{agent.port}/v1/credentials"
    env.update(extra)
    return env


def render(creds: Credentials | None) -> str:
    """Credentials as a golden-file text, secrets revealed (they are the fake agent's)."""
    if creds is None:
        return "null\n"
    doc = {
        "access_key_id": creds.access_key_id,
        "secret_access_key": creds.secret_access_key.reveal(),
        "token": creds.token.reveal(),
        "expiration": creds.expiration,
        "last_updated": creds.last_updated,
        "role_arn": creds.role_arn,
    }
    return json.dumps(doc, indent=2) + "\n"


class SteppedSleep:
    """An injected sleep: each caller (by task name) parks until the test releases it.

    `release(name)` moves the ManualClock by the requested delay and lets the sleeper go;
    `step(name)` does that and waits until the same loop parks again (one iteration done).
    """

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.parked: dict[str, tuple[float, asyncio.Future[None]]] = {}
        self.history: list[tuple[str, float]] = []

    async def __call__(self, delay: float) -> None:
        task = asyncio.current_task()
        name = task.get_name() if task else "?"
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.parked[name] = (delay, fut)
        self.history.append((name, delay))
        try:
            await fut
        finally:
            if self.parked.get(name, (0.0, None))[1] is fut:
                del self.parked[name]

    async def wait_parked(self, name: str, timeout: float = 5.0) -> float:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while name not in self.parked:
            if loop.time() > deadline:
                raise AssertionError(f"{name} never slept; parked: {sorted(self.parked)}")
            await asyncio.sleep(0.002)
        return self.parked[name][0]

    async def release(self, name: str, *, advance: float | None = None) -> float:
        delay = await self.wait_parked(name)
        _, fut = self.parked.pop(name)
        self.clock.advance(delay if advance is None else advance)
        fut.set_result(None)
        return delay

    async def step(self, name: str, *, advance: float | None = None) -> float:
        """Release `name`, wait for its next sleep, return that next delay."""
        await self.release(name, advance=advance)
        return await self.wait_parked(name)

    def delays(self, name: str) -> list[float]:
        return [d for n, d in self.history if n == name]


# -- fixtures shared by the ECS test modules (import them by name there) ------------------------


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
async def agent(clock: ManualClock) -> AsyncIterator[FakeEcsAgent]:
    agent = await started_agent(clock)
    yield agent
    await agent.stop()


@pytest.fixture
def sleeper(clock: ManualClock) -> SteppedSleep:
    return SteppedSleep(clock)
