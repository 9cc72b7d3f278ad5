"""Time, injected: real code gets SystemClock, tests get a clock they move by hand."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock seconds since the epoch."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""
        ...


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock for tests: starts at `start` and moves only with `advance`."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._mono = 1000.0

    def time(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._now += seconds
        self._mono += seconds


def iso_z(ts: float) -> str:
    """`YYYY-MM-DDTHH:MM:SSZ`, the only timestamp shape IMDS clients all accept."""
    return datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(value: str) -> float:
    """Parse an RFC 3339 timestamp (fractional seconds and offsets allowed) to epoch seconds."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    if "." in text:
        # Python < 3.12 fromisoformat takes at most 6 fractional digits; RFC3339Nano has 9.
        head, _, rest = text.partition(".")
        digits = ""
        tail = rest
        while tail and tail[0].isdigit():
            digits += tail[0]
            tail = tail[1:]
        text = f"{head}.{(digits + '000000')[:6]}{tail}"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()
