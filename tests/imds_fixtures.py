"""The fixture task and credentials as a StaticSource (`tests.servers.running_service` serves it)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from metamock.secrets import Secret
from metamock.sources.base import Credentials, TaskFacts
from metamock.sources.static import StaticSource

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def fixture_task() -> dict[str, Any]:
    task: dict[str, Any] = json.loads((FIXTURES / "fargate-task.json").read_text())
    return task


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
