"""The capabilities this process has, read from /proc (the one CapEff reader): what `serve`,
`sidecar`, `netfilter` and `doctor` all decide on (CAP_NET_ADMIN for the redirect, CAP_SYS_PTRACE
for another process's environment)."""

from __future__ import annotations

from pathlib import Path

from metamock.endpoint import endpoint_advice
from metamock.errors import PrivilegeError

CAP_NET_ADMIN = 12
CAP_SYS_PTRACE = 19
SELF_STATUS = Path("/proc/self/status")


def parse_cap_eff(proc_status: str) -> int | None:
    """The CapEff mask in the text of a /proc/<pid>/status file; None when it has none."""
    for line in proc_status.splitlines():
        if line.startswith("CapEff:"):
            try:
                return int(line.split(":", 1)[1].strip(), 16)
            except ValueError:
                return None
    return None


def effective_capabilities(status_file: Path = SELF_STATUS) -> int | None:
    """This process's effective capability mask; None when /proc does not tell (not mounted)."""
    try:
        text = status_file.read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    return parse_cap_eff(text)


def has_capability(mask: int | None, bit: int) -> bool:
    """Whether `bit` is set; an unknown mask counts as not having it."""
    return mask is not None and bool(mask >> bit & 1)


def has_net_admin(status_file: Path = SELF_STATUS) -> bool:
    """Whether this process may change netfilter rules and routes."""
    return has_capability(effective_capabilities(status_file), CAP_NET_ADMIN)


def require_net_admin(port: int, status_file: Path = SELF_STATUS) -> None:
    """Raise PrivilegeError (exit 2) naming CAP_NET_ADMIN and the endpoint alternative."""
    if not has_net_admin(status_file):
        raise PrivilegeError(
            "CAP_NET_ADMIN is missing (as on Fargate), so 169.254.169.254 cannot be redirected "
            f"here; nothing was changed. Set {endpoint_advice(port)} for the clients instead"
        )
