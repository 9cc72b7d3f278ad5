"""Runs every group of checks concurrently, each under a hard timeout."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from metamock.doctor import credentials, ecs, environment, missed, process, proxy, redirect, server, sts
from metamock.doctor.context import DoctorContext
from metamock.doctor.place import place_of
from metamock.doctor.report import Check, failed

# Values from the environment that must never be echoed, whatever a check prints.
SECRET_VARIABLES = (
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ACCESS_KEY_ID",
)


@dataclass(frozen=True)
class Group:
    """Checks that depend on each other and so run in order; `names` fixes the output order."""

    names: tuple[str, ...]
    run: Callable[[DoctorContext, list[Check]], Awaitable[None]]


GROUPS: tuple[Group, ...] = (
    Group(environment.NAMES, environment.checks),
    Group(ecs.NAMES, ecs.checks),
    Group(credentials.NAMES, credentials.checks),
    Group(sts.NAMES, sts.checks),
    Group(server.NAMES, server.checks),
    Group(missed.NAMES, missed.checks),
    Group(redirect.NAMES, redirect.checks),
    Group(process.NAMES, process.checks),
    Group(proxy.NAMES, proxy.checks),
)


async def _run_group(ctx: DoctorContext, group: Group) -> list[Check]:
    out: list[Check] = []
    try:
        await asyncio.wait_for(group.run(ctx, out), ctx.timeouts.group)
    except TimeoutError:
        pass
    except Exception as exc:  # a broken check must not hide the others
        out.append(failed(group.names[0], f"doctor error: {type(exc).__name__}", "please report this"))
    seen = {c.name for c in out}
    for name in group.names:
        if name not in seen:
            out.append(
                failed(
                    name,
                    f"no result within {ctx.timeouts.group:g} s (something it waits on hangs)",
                    "see the checks above for the endpoint that does not answer",
                )
            )
    order = {name: i for i, name in enumerate(group.names)}
    return sorted(out, key=lambda c: order.get(c.name, len(order)))


async def run_checks(ctx: DoctorContext, groups: Sequence[Group] = GROUPS) -> list[Check]:
    """All checks, in a fixed order, with secrets scrubbed from every detail and fix."""
    if ctx.place is None:
        ctx = dataclasses.replace(ctx, place=place_of(ctx))
    for name in SECRET_VARIABLES:
        ctx.redactor.add(ctx.environ.get(name))
    # The credentials id in the relative URI is a bearer capability on ECS on EC2.
    relative = ctx.environ.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "")
    ctx.redactor.add(relative.rstrip("/").rsplit("/", 1)[-1])
    results = await asyncio.gather(*(_run_group(ctx, g) for g in groups))
    scrub = ctx.redactor.scrub
    return [Check(c.name, c.status, scrub(c.detail), scrub(c.fix)) for checks in results for c in checks]
