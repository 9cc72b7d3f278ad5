"""The narrow interface between upstreams and the IMDS face."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from metamock.secrets import Secret, key_hint


@dataclass(frozen=True)
class Credentials:
    """Role credentials as served under iam/security-credentials/<role>."""

    access_key_id: str
    secret_access_key: Secret
    token: Secret
    expiration: float  # epoch seconds
    last_updated: float  # epoch seconds: when metamock obtained them
    role_arn: str | None = None  # None for the EKS Pod Identity shape

    def __repr__(self) -> str:
        return (
            f"Credentials(access_key_id={key_hint(self.access_key_id)!r}, "
            f"expiration={self.expiration!r}, role_arn={self.role_arn!r})"
        )


@dataclass(frozen=True)
class TaskFacts:
    """The ECS documents the tree is translated from."""

    task: dict[str, Any]
    container: dict[str, Any]
    fetched_at: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class MetadataSource(Protocol):
    """An upstream of task facts and role credentials.

    `start()` fetches the task documents (raising UpstreamError when they cannot be had) and
    starts background refreshes; `on_change` is called (no arguments) after any refresh that
    changed `facts()` or `credentials()`. Those two are pure reads: they never fetch, change
    anything or call `on_change` (the listener, the service's rebuild, calls them).
    """

    on_change: Callable[[], None] | None

    async def start(self) -> None: ...

    def facts(self) -> TaskFacts: ...

    def credentials(self) -> Credentials | None:
        """Current credentials, or None when there are none (or they have truly expired)."""
        ...

    async def credentials_within(self, timeout: float) -> Credentials | None:
        """Current credentials; when there are none, wait up to `timeout` for one shared fetch."""
        ...

    def last_error(self) -> tuple[float, str] | None:
        """The last failed credentials fetch (epoch seconds, a line safe to show), kept after a
        recovery; None when none failed. A pure read, like `credentials()`."""
        ...

    async def close(self) -> None: ...
