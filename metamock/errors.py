"""The one error hierarchy. The CLI turns each into one line and an exit code."""

from __future__ import annotations


class MetamockError(Exception):
    """Base of every error metamock raises on purpose."""

    exit_code = 1


class SettingsError(MetamockError):
    """A bad flag, environment value or config file entry. Names the setting."""

    exit_code = 2

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting


class UpstreamError(MetamockError):
    """The ECS agent, the credentials endpoint or AWS answered badly or not at all."""


class NetfilterError(MetamockError):
    """Rules or routes could not be applied or removed."""


class PrivilegeError(MetamockError):
    """The process lacks a capability it needs (e.g. CAP_NET_ADMIN, CAP_SYS_PTRACE)."""

    exit_code = 2


class EnvironmentReadError(MetamockError):
    """Another process's environment could not be read."""

    exit_code = 2
