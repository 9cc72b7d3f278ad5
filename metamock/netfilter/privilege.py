"""Whether this process may change netfilter rules and routes: CAP_NET_ADMIN in CapEff."""

from __future__ import annotations

from pathlib import Path

from metamock.errors import PrivilegeError

CAP_NET_ADMIN = 12


def endpoint_advice(port: int) -> str:
    """The alternative when the redirect cannot be set up: point the SDKs at metamock directly."""
    return f"AWS_EC2_METADATA_SERVICE_ENDPOINT=http://127.0.0.1:{port}/"


def has_net_admin(proc_status: str) -> bool:
    """Read CapEff from the text of /proc/<pid>/status."""
    for line in proc_status.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split(":", 1)[1].strip(), 16) >> CAP_NET_ADMIN & 1)
    return False


def require_net_admin(port: int, status_file: Path = Path("/proc/self/status")) -> None:
    """Raise PrivilegeError (exit 2) naming CAP_NET_ADMIN and the endpoint alternative."""
    try:
        text = status_file.read_text(encoding="ascii", errors="replace")
    except OSError:
        text = ""
    if not has_net_admin(text):
        raise PrivilegeError(
            "CAP_NET_ADMIN is missing (as on Fargate), so 169.254.169.254 cannot be redirected "
            f"here; nothing was changed. Set {endpoint_advice(port)} for the clients instead"
        )
