"""What clients asked the running server for and did not get: its most missed (404) paths.

Asked over the control socket (`metamock status`'s answer, without its redirect check: the
redirect group checks that), so it needs a server in this network namespace that doctor may talk
to; without one the check is skipped. Each path comes with its fix: a `[meta-data]` (or
`[dynamic]`, `user-data`) entry in the config file, or "EC2 has no such path either" where a real
instance answers 404 too and the client is expected to cope.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from metamock.commands.status import ask
from metamock.doctor.context import DoctorContext
from metamock.doctor.report import Check, passed, skipped, warned
from metamock.errors import MetamockError
from metamock.imds.counters import OTHER

NAMES = ("missed-paths",)
SHOWN = 5

# Under meta-data/: where a real EC2 instance answers 404 as well, and when.
EC2_MISSES_TOO = {
    "public-keys": "on an instance launched without a key pair",
    "spot": "until a Spot interruption is scheduled (`metamock trigger spot` makes one)",
    "events/recommendations/rebalance": "until a rebalance recommendation (`metamock trigger rebalance`)",
    "autoscaling": "outside an Auto Scaling group (`metamock trigger asg-terminate` makes one)",
    "elastic-gpus": "without an Elastic GPU",
    "elastic-inference": "without an Elastic Inference accelerator",
    "ipv6": "without an IPv6 address",
    "tags": "unless instance tags in metadata are turned on (here: a [tags] table in the config file)",
}


def fix_for(path: str) -> str:
    """What to do about clients missing `path` (a path as metamock.imds.counters counts it)."""
    if path == OTHER:
        return f"{OTHER}: more distinct paths than are counted; see them with `--access-log`"
    parts = path.strip("/").split("/")
    if parts[0] != "latest":
        return f"{path}: not an IMDS path (EC2 answers 404 too): the client's base URL is wrong"
    rest = "/".join(parts[2:])
    if len(parts) >= 2 and parts[1] == "meta-data" and rest:
        for prefix, when in EC2_MISSES_TOO.items():
            if rest == prefix or rest.startswith(prefix + "/"):
                return f"{path}: EC2 has no such path either {when}; clients should cope with the 404"
        return (
            f'{path}: add it to the config file: [meta-data] "{rest}" = "..." (then SIGHUP or --watch-config)'
        )
    if len(parts) >= 2 and parts[1] == "dynamic" and rest:
        return f'{path}: add it to the config file: [dynamic] "{rest}" = "..."'
    if len(parts) == 2 and parts[1] == "user-data":
        return (
            f"{path}: EC2 answers 404 too when an instance has no user data; "
            'to serve some: user-data = "..." in the config file'
        )
    return f"{path}: not a path EC2 serves either: check what the client asks for"


def judge(requests: Mapping[str, Any]) -> Check:
    total = requests.get("total", 0)
    top = requests.get("top_404") or []
    if not top:
        return passed("missed-paths", f"no request answered 404 since the server started ({total} requests)")
    shown = ", ".join(f"{path} ({count})" for path, count in top[:SHOWN])
    missed = sum(count for _path, count in top)
    return warned(
        "missed-paths",
        f"{missed} of {total} requests since start answered 404; most missed: {shown}",
        "; ".join(fix_for(path) for path, _count in top[:SHOWN]),
    )


async def checks(ctx: DoctorContext, out: list[Check]) -> None:
    try:
        status = await asyncio.to_thread(
            ask, ctx.port, ctx.environ, redirect=False, timeout=ctx.timeouts.request
        )
    except MetamockError as exc:
        out.append(skipped("missed-paths", f"no server status: {exc}"))
        return
    out.append(judge(status.get("requests") or {}))
