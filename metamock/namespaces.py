"""Making a network namespace for `metamock run`: unshare(2), the id maps, and why it was refused.

Root with CAP_SYS_ADMIN makes a plain network namespace. Anyone else (a container's root without
CAP_SYS_ADMIN included) makes a user namespace and a network namespace owned by it, in one
unshare(2): in the user namespace the caller is root (uid 0 maps to the caller's own uid), which
is what adding a route and an nft rule in that network namespace needs, and nothing outside it.

unshare(CLONE_NEWUSER) refuses a multi-threaded caller, so this runs in a freshly forked process
before anything starts a thread. Python 3.11 has no os.unshare; ctypes calls libc's.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

from metamock.errors import NamespaceError
from metamock.nsexec import CLONE_NEWNET, CLONE_NEWUSER, unshare, write_id_maps

PROC_SYS = Path("/proc/sys")
INSTEAD = (
    "instead: as root, `metamock netfilter apply` then `metamock serve`; or point the program at a "
    "server with AWS_EC2_METADATA_SERVICE_ENDPOINT"
)


@dataclass(frozen=True)
class Made:
    """What `enter()` made: a user namespace too (`user`) or only a network namespace."""

    user: bool


def enter(uid: int, gid: int) -> Made:
    """Move this (single-threaded) process into a new network namespace; NamespaceError (one line:
    the reason, and what to do instead) when the kernel refuses."""
    if os.geteuid() == 0:
        try:
            unshare(CLONE_NEWNET)
            return Made(user=False)
        except PermissionError:
            pass  # root without CAP_SYS_ADMIN (a container's): a user namespace still may do
    try:
        unshare(CLONE_NEWUSER | CLONE_NEWNET)
    except OSError as exc:
        raise NamespaceError(f"cannot create a user namespace: {refusal(exc.errno)}; {INSTEAD}") from exc
    try:
        write_id_maps(Path("/proc/self"), inside=(0, 0), outside_uid=uid, outside_gid=gid)
    except OSError as exc:
        raise NamespaceError(
            f"cannot map your ids in a new user namespace: {refusal(exc.errno)}; {INSTEAD}"
        ) from exc
    return Made(user=True)


def refusal(code: int | None, proc_sys: Path = PROC_SYS) -> str:
    """Why unshare(CLONE_NEWUSER) failed with errno `code`, naming the setting that says no."""
    limit = _read(proc_sys / "user/max_user_namespaces")
    if limit == "0":
        return "user namespaces are off (sysctl user.max_user_namespaces = 0)"
    if _read(proc_sys / "kernel/unprivileged_userns_clone") == "0":
        return "unprivileged user namespaces are off (sysctl kernel.unprivileged_userns_clone = 0)"
    if code == errno.ENOSPC:
        return f"the limit of user namespaces is reached (sysctl user.max_user_namespaces = {limit})"
    if code == errno.EPERM:
        if _read(proc_sys / "kernel/apparmor_restrict_unprivileged_userns") == "1":
            return (
                "AppArmor restricts unprivileged user namespaces "
                "(sysctl kernel.apparmor_restrict_unprivileged_userns = 1)"
            )
        if _seccomp_filtered():
            return "unshare(2) is refused by a seccomp filter (a container's default profile does that)"
    return os.strerror(code) if code else "unknown error"


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except OSError:
        return None


def _seccomp_filtered(status: Path = Path("/proc/self/status")) -> bool:
    try:
        lines = status.read_text(encoding="ascii").splitlines()
    except OSError:
        return False
    return any(line.split() == ["Seccomp:", "2"] for line in lines)
