"""A source holding fixed facts and credentials: for tests, benchmarks and embedding."""

from __future__ import annotations

from collections.abc import Callable

from metamock.sources.base import Credentials, TaskFacts


class StaticSource:
    def __init__(self, facts: TaskFacts, credentials: Credentials | None = None) -> None:
        self._facts = facts
        self._credentials = credentials
        self.on_change: Callable[[], None] | None = None

    async def start(self) -> None:
        return None

    def facts(self) -> TaskFacts:
        return self._facts

    def credentials(self) -> Credentials | None:
        return self._credentials

    async def credentials_within(self, timeout: float) -> Credentials | None:
        return self._credentials

    def last_error(self) -> tuple[float, str] | None:
        return None

    def set(self, facts: TaskFacts | None = None, credentials: Credentials | None = None) -> None:
        """Replace facts and/or credentials and tell the listener."""
        if facts is not None:
            self._facts = facts
        if credentials is not None:
            self._credentials = credentials
        if self.on_change:
            self.on_change()

    async def close(self) -> None:
        return None
