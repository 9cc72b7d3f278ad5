"""Builders shared by the IMDS tests: the fixture task as a StaticSource-backed Service."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from metamock.clock import Clock
from metamock.secrets import Secret
from metamock.service import Service
from metamock.settings import ConfigFile, Settings
from metamock.sources.base import Credentials, TaskFacts
from metamock.sources.static import StaticSource

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def fixture_task() -> dict[str, Any]:
    return json.loads((FIXTURES / "fargate-task.json").read_text())


def fixture_credentials(now: float | None = None, lifetime: float = 6 * 3600) -> Credentials:
    raw = json.loads((FIXTURES / "credentials.json").read_text())
    now = time.time() if now is None else now
    return Credentials(
        access_key_id=raw["AccessKeyId"],
        secret_access_key=Secret(raw["SecretAccessKey"]),
        token=Secret(raw["Token"]),
        expiration=now + lifetime,
        last_updated=now,
        role_arn=raw["RoleArn"],
    )


def fixture_source(
    credentials: Credentials | None = None, task: dict[str, Any] | None = None
) -> StaticSource:
    task = task or fixture_task()
    return StaticSource(TaskFacts(task, task["Containers"][0], fetched_at=1_600_000_000), credentials)


@asynccontextmanager
async def running_service(
    *,
    source: StaticSource | None = None,
    clock: Clock | None = None,
    config: ConfigFile | None = None,
    **flags: Any,
) -> AsyncIterator[Service]:
    flags.setdefault("port", 0)
    flags.setdefault("host", ["127.0.0.1"])
    settings = Settings.load(flags, {})
    if config is not None:
        settings = Settings(**{**settings.__dict__, "config": config})
    service = await Service.start(
        settings, clock=clock, source=source or fixture_source(fixture_credentials())
    )
    try:
        yield service
    finally:
        await service.stop(stop_notice=False)
