"""The processes below this one, read from /proc, and signals that cannot hit a reused pid.

The supervisor stops what its programs started, not only the programs: a daemon that detached
with `setsid` left their process groups, and is found only by its parent links. One pass over
/proc/*/stat gives every process's parent, group and state; the rest is a walk over that table.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

PROC = "/proc"


@dataclass(frozen=True)
class Proc:
    """One process as /proc/<pid>/stat shows it."""

    pid: int
    ppid: int
    pgid: int
    state: str  # "Z": exited, waiting for its parent's wait()
    start: int  # start time in clock ticks since boot: with the pid, names one process for good

    @property
    def alive(self) -> bool:
        return self.state not in ("Z", "X")


def parse_stat(pid: int, data: bytes) -> Proc:
    """A /proc/<pid>/stat line; the command name (field 2) may hold spaces and parentheses."""
    fields = data[data.rindex(b")") + 2 :].split()
    # fields[0] is stat field 3 (state): ppid is 4, pgrp 5, starttime 22.
    return Proc(pid, int(fields[1]), int(fields[2]), fields[0].decode("ascii", "replace"), int(fields[19]))


def read(pid: int) -> Proc | None:
    """The process `pid`, or None when there is none (any more)."""
    try:
        return parse_stat(pid, Path(f"{PROC}/{pid}/stat").read_bytes())
    except (OSError, ValueError, IndexError):
        return None


def snapshot() -> dict[int, Proc]:
    """Every process this /proc shows (a few ms for a few hundred processes)."""
    table: dict[int, Proc] = {}
    with os.scandir(PROC) as entries:
        names = [e.name for e in entries if e.name.isdigit()]
    for name in names:
        proc = read(int(name))
        if proc is not None:
            table[proc.pid] = proc
    return table


def children(pid: int) -> list[Proc]:
    """The children of `pid` (of any of its threads), exited-but-unreaped ones included."""
    try:
        with os.scandir(f"{PROC}/{pid}/task") as tasks:
            files = [Path(task.path, "children") for task in tasks]
    except OSError:
        return []
    if not files or not files[0].exists():  # a kernel without CONFIG_PROC_CHILDREN: by parent
        return [proc for proc in snapshot().values() if proc.ppid == pid]
    listed: list[str] = []
    for file in files:
        try:
            listed += file.read_text().split()
        except OSError:  # that thread has ended
            continue
    found = [read(int(name)) for name in listed]
    return [proc for proc in found if proc is not None and proc.ppid == pid]


def descendants(table: Mapping[int, Proc], roots: Iterable[int]) -> dict[int, Proc]:
    """The roots found in `table` and every process below them."""
    below: dict[int, list[Proc]] = {}
    for proc in table.values():
        below.setdefault(proc.ppid, []).append(proc)
    found: dict[int, Proc] = {}
    todo = [table[pid] for pid in roots if pid in table]
    while todo:
        proc = todo.pop()
        if proc.pid in found:
            continue
        found[proc.pid] = proc
        todo += below.get(proc.pid, [])
    return found


def send(proc: Proc, signum: int) -> bool:
    """Signal `proc` if it is still that process (same pid *and* start time); whether it was.

    A pid read from /proc may be reaped and reused before the signal goes: a pidfd pins the
    process, so checking its start time after opening it makes the signal reach only `proc`.
    """
    try:
        fd = os.pidfd_open(proc.pid)
    except ProcessLookupError:
        return False
    except OSError:  # no pidfd (old kernel, a seccomp filter): check, then signal by pid
        fd = None
    try:
        current = read(proc.pid)
        if current is None or current.start != proc.start:
            return False
        if fd is None:
            os.kill(proc.pid, signum)
        else:
            signal.pidfd_send_signal(fd, signum)
        return True
    except (ProcessLookupError, PermissionError):
        return False
    finally:
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
