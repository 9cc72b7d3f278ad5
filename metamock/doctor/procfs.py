"""Reading /proc (or a fake tree under another root, for tests)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

CAP_NET_ADMIN = 12
CAP_SYS_PTRACE = 19


def read_environ(proc_root: Path, pid: int | str) -> dict[str, str]:
    """The initial environment of `pid`. Raises OSError (e.g. PermissionError)."""
    raw = (proc_root / str(pid) / "environ").read_bytes()
    env: dict[str, str] = {}
    for item in raw.split(b"\0"):
        name, sep, value = item.partition(b"=")
        if sep and name:
            env[name.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    return env


def read_cmdline(proc_root: Path, pid: int | str) -> list[str]:
    """argv of `pid`; empty for kernel threads. Raises OSError."""
    raw = (proc_root / str(pid) / "cmdline").read_bytes()
    return [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]


def cap_eff(proc_root: Path) -> int | None:
    """This process's effective capability mask, None when /proc does not tell."""
    try:
        text = (proc_root / "self" / "status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("CapEff:"):
            try:
                return int(line.split(":", 1)[1].strip(), 16)
            except ValueError:
                return None
    return None


def has_cap(mask: int | None, bit: int) -> bool:
    return mask is not None and bool(mask >> bit & 1)


def pids(proc_root: Path) -> Iterator[int]:
    try:
        entries = list(proc_root.iterdir())
    except OSError:
        return
    for entry in entries:
        if entry.name.isdigit():
            yield int(entry.name)


def processes(proc_root: Path) -> Iterator[tuple[int, list[str]]]:
    """(pid, argv) of every process we may read; vanished or hidden ones are left out."""
    for pid in pids(proc_root):
        try:
            argv = read_cmdline(proc_root, pid)
        except OSError:
            continue
        if argv:
            yield pid, argv
