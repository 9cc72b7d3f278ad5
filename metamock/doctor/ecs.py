"""The ECS task metadata endpoint (TMDE v4): reachable, valid, fast, and its ClockDrift."""

from __future__ import annotations

import json
from typing import Any

from metamock.doctor.context import CheckFailed, DoctorContext
from metamock.doctor.http import ProbeError, probe
from metamock.doctor.report import Check, failed, passed, skipped, warned

NAMES = ("tmde", "clock-drift")
SLOW_MS = 500  # botocore gives IMDS one second; a TMDE this slow eats most of it


async def fetch_task(ctx: DoctorContext) -> tuple[dict[str, Any], int]:
    """The `/task` document and the milliseconds it took; CheckFailed('tmde') otherwise."""
    base = ctx.environ["ECS_CONTAINER_METADATA_URI_V4"].rstrip("/")
    url = f"{base}/task"
    try:
        reply = await probe("GET", url, timeout=ctx.timeouts.request)
    except ProbeError as exc:
        raise CheckFailed(
            failed(
                "tmde",
                f"GET {url}: {exc}",
                "the ECS agent's endpoint 169.254.170.2 is not reachable from this network "
                "namespace: run in the task's awsvpc network (not a nested/other netns) and do "
                "not proxy or firewall 169.254.170.2",
            )
        ) from exc
    if reply.status != 200:
        fix = (
            "throttled (ECS agent: 40 req/s per path): cache the task document instead of polling"
            if reply.status == 429
            else "the URI is stale or wrong: use the value ECS injected into this container"
        )
        raise CheckFailed(failed("tmde", f"GET {url}: HTTP {reply.status} in {reply.ms} ms", fix))
    try:
        doc = json.loads(reply.body)
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or "TaskARN" not in doc:
        raise CheckFailed(
            failed(
                "tmde",
                f"GET {url}: HTTP 200 but not a task document (no TaskARN)",
                "ECS_CONTAINER_METADATA_URI_V4 must point at the ECS agent's /v4/<id> endpoint",
            )
        )
    return doc, reply.ms


def check_tmde(doc: dict[str, Any], ms: int) -> Check:
    what = f"{doc.get('Family', '?')}:{doc.get('Revision', '?')} ({doc.get('LaunchType', '?')})"
    if ms > SLOW_MS:
        return warned(
            "tmde",
            f"task {what} answered in {ms} ms",
            "the ECS agent is slow (host overloaded or throttling): metamock caches the "
            "document, but a client polling TMDE itself may time out",
        )
    return passed("tmde", f"task {what} answered in {ms} ms")


def check_clock_drift(doc: dict[str, Any]) -> Check:
    drift: Any = None
    for container in doc.get("Containers") or []:
        if isinstance(container, dict) and isinstance(container.get("ClockDrift"), dict):
            drift = container["ClockDrift"]
            break
    if drift is None:
        return skipped("clock-drift", "the task document carries no ClockDrift")
    status = str(drift.get("ClockSynchronizationStatus", "?"))
    bound = drift.get("ClockErrorBound")
    seen = f"{status}, error bound {bound:.3f} ms" if isinstance(bound, int | float) else status
    if status != "SYNCHRONIZED":
        return warned(
            "clock-drift",
            seen,
            "the host clock is not synchronised: AWS rejects requests signed more than 5 min off "
            "(RequestTimeTooSkewed) and credential expiry is misjudged; on ECS on EC2 run chrony "
            "with the Amazon Time Sync Service (169.254.169.123)",
        )
    return passed("clock-drift", seen)


async def checks(ctx: DoctorContext, out: list[Check]) -> None:
    if not ctx.environ.get("ECS_CONTAINER_METADATA_URI_V4"):
        out.append(skipped("tmde", "ECS_CONTAINER_METADATA_URI_V4 is not set"))
        out.append(skipped("clock-drift", "no task metadata endpoint"))
        return
    try:
        doc, ms = await fetch_task(ctx)
    except CheckFailed as exc:
        out.append(exc.check)
        out.append(skipped("clock-drift", "no task document"))
        return
    out.append(check_tmde(doc, ms))
    out.append(check_clock_drift(doc))
