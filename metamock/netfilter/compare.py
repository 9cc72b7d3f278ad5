"""Naming what differs between the live rules of a chain and what a clean apply writes."""

from __future__ import annotations

import re

_PORT = re.compile(r"(redirect to :|--to-ports )(\d+)")
_DST = re.compile(r"(?:daddr |-d )([0-9a-f.:]+)")


def _shape(rule: str) -> str:
    return _PORT.sub(r"\1N", rule)


def chain_problems(where: str, live: list[str], expected: list[str], port: int) -> list[str]:
    """One line per difference, e.g. "chain output of table inet metamock is empty" or
    "... redirect points at :1339, recorded :1338"; [] when `live` equals `expected`."""
    if live == expected:
        return []
    if not live:
        return [f"{where} is empty"]
    problems = []
    rest = list(live)
    for rule in expected:
        if rule in rest:
            rest.remove(rule)
            continue
        twin = next((r for r in rest if _shape(r) == _shape(rule)), None)
        if twin is not None:
            rest.remove(twin)
            found, dst = _PORT.search(twin), _DST.search(twin)
            target = f"{dst[1]}:80" if dst else "the redirect"
            problems.append(f"{where}: {target} points at :{found[2] if found else '?'}, recorded :{port}")
        else:
            problems.append(f"{where}: rule missing: {rule}")
    problems += [f"{where}: unexpected rule: {rule}" for rule in rest]
    if not problems:  # the same rules in another order
        problems.append(f"{where}: rules out of order")
    return problems
