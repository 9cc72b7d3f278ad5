"""The one error hierarchy. The CLI turns each into one line and an exit code."""

from __future__ import annotations


class MetamockError(Exception):
    """Base of every error metamock raises on purpose."""

    exit_code = 1


class SettingsError(MetamockError):
    """A bad flag, environment value or config file entry. Names the setting."""

    exit_code = 2

    def __init__(self, setting: str, message: str, *, value: str | None = None) -> None:
        # `value`: the offending value, named with the setting (`--port 1338: address already in use`).
        super().__init__(f"{setting} {value}: {message}" if value is not None else f"{setting}: {message}")
        self.setting = setting


class UpstreamError(MetamockError):
    """The ECS agent, the credentials endpoint or AWS answered badly or not at all."""


class TaskDocumentError(UpstreamError):
    """The ECS agent's task or container document lacks, or mistypes, what translation reads.

    Exit code 1 like every upstream fault: no flag of ours fixes it, and retrying does not either
    (the agent answers the same document), so start-up fails at once instead of after ~10 s.
    """


class NetfilterError(MetamockError):
    """Rules or routes could not be applied or removed."""


class PrivilegeError(MetamockError):
    """The process lacks a capability it needs (e.g. CAP_NET_ADMIN, CAP_SYS_PTRACE)."""

    exit_code = 2


class EnvironmentReadError(MetamockError):
    """Another process's environment could not be read."""

    exit_code = 2


class NamespaceError(MetamockError):
    """A namespace (or the user-mode network for it) could not be made: `metamock run`."""

    exit_code = 2
