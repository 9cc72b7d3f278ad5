"""The result of one check, and how a run is shown: one line per check, or JSON."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum


class Status(StrEnum):
    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True)
class Check:
    """What one check saw (`detail`) and, unless it passed, what to change (`fix`)."""

    name: str
    status: Status
    detail: str
    fix: str = ""


def passed(name: str, detail: str) -> Check:
    return Check(name, Status.PASS, detail)


def warned(name: str, detail: str, fix: str) -> Check:
    return Check(name, Status.WARN, detail, fix)


def failed(name: str, detail: str, fix: str) -> Check:
    return Check(name, Status.FAIL, detail, fix)


def skipped(name: str, detail: str, fix: str = "") -> Check:
    return Check(name, Status.SKIP, detail, fix)


class Redactor:
    """Secret values seen during one run; every rendered line is scrubbed of them."""

    def __init__(self) -> None:
        self._values: set[str] = set()

    def add(self, value: str | None) -> None:
        # Very short values would mask ordinary words; real secrets are long.
        if value and len(value) >= 8:
            self._values.add(value)

    def scrub(self, text: str) -> str:
        for value in sorted(self._values, key=len, reverse=True):
            text = text.replace(value, "****")
        return text

    def __repr__(self) -> str:
        return f"Redactor({len(self._values)} values)"


def exit_code(checks: Iterable[Check]) -> int:
    """0 when nothing failed, 1 otherwise."""
    return 1 if any(c.status is Status.FAIL for c in checks) else 0


_COLOURS = {
    Status.PASS: "\033[32m",
    Status.WARN: "\033[33m",
    Status.FAIL: "\033[31;1m",
    Status.SKIP: "\033[2m",
}
_RESET = "\033[0m"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def render_human(checks: Sequence[Check], *, colour: bool = False) -> str:
    """One line per check: status, name, what was seen, and the fix; then a count."""
    width = max((len(c.name) for c in checks), default=0)
    lines = []
    for check in checks:
        word = f"{check.status.value:<4}"
        if colour:
            word = f"{_COLOURS[check.status]}{word}{_RESET}"
        line = f"{word}  {check.name:<{width}}  {_one_line(check.detail)}"
        if check.fix:
            line += f" -> fix: {_one_line(check.fix)}"
        lines.append(line)
    counts = {s: sum(1 for c in checks if c.status is s) for s in Status}
    lines.append(", ".join(f"{counts[s]} {s.value}" for s in Status))
    return "\n".join(lines) + "\n"


def render_json(checks: Sequence[Check]) -> str:
    """`{"checks": [{"name", "status", "detail", "fix"}]}`, as the contract fixes it."""
    doc = {
        "checks": [
            {"name": c.name, "status": c.status.value, "detail": c.detail, "fix": c.fix} for c in checks
        ]
    }
    return json.dumps(doc, indent=2) + "\n"
