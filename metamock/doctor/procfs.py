"""Reading /proc (or a fake tree under another root, for tests)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from metamock.envexport import parse_environ


def read_environ(proc_root: Path, pid: int | str) -> dict[str, str]:
    """The initial environment of `pid`, as `metamock env export` parses it, decoded for display.

    Raises OSError (e.g. PermissionError): the checks tell those apart.
    """
    raw = (proc_root / str(pid) / "environ").read_bytes()
    return {
        name.decode("utf-8", "replace"): value.decode("utf-8", "replace")
        for name, value in parse_environ(raw).items()
    }


def pid1_environ(proc_root: Path) -> dict[str, str] | None:
    """PID 1's environment as `read_environ` gives it, or None when it cannot be read."""
    try:
        return read_environ(proc_root, 1)
    except OSError:
        return None


def read_cmdline(proc_root: Path, pid: int | str) -> list[str]:
    """argv of `pid`; empty for kernel threads. Raises OSError."""
    raw = (proc_root / str(pid) / "cmdline").read_bytes()
    return [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]


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
