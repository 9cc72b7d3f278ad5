"""Reading the process tree from /proc, and signals that reach only the process that was read."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess

from metamock import proctree


def test_a_command_name_with_spaces_and_parentheses_is_parsed() -> None:
    rest = " ".join(str(n) for n in range(10, 60))
    proc = proctree.parse_stat(77, b"77 (a) b (c) S 1 70 70 " + rest.encode())
    assert (proc.pid, proc.state, proc.ppid, proc.pgid) == (77, "S", 1, 70)
    assert proc.start == 25  # field 22; fields 7.. are 10, 11, ...
    assert proc.alive
    assert not dataclasses.replace(proc, state="Z").alive


def test_descendants_follow_parent_links() -> None:
    def p(pid: int, ppid: int) -> proctree.Proc:
        return proctree.Proc(pid, ppid, pid, "S", 0)

    table = {q.pid: q for q in (p(1, 0), p(10, 1), p(11, 10), p(12, 11), p(20, 1), p(21, 20))}
    assert set(proctree.descendants(table, [10])) == {10, 11, 12}
    assert set(proctree.descendants(table, [10, 20, 99])) == {10, 11, 12, 20, 21}


def test_this_process_and_its_child_are_in_the_snapshot() -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        table = proctree.snapshot()
        assert table[child.pid].ppid == os.getpid()
        assert child.pid in proctree.descendants(table, [os.getpid()])
    finally:
        child.kill()
        child.wait()


def test_send_refuses_a_pid_now_naming_another_process() -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        proc = proctree.read(child.pid)
        assert proc is not None
        assert not proctree.send(dataclasses.replace(proc, start=proc.start - 1), signal.SIGTERM)
        assert child.poll() is None
        assert proctree.send(proc, signal.SIGTERM)
        assert child.wait(timeout=5) == -signal.SIGTERM
        assert not proctree.send(proc, signal.SIGTERM)  # gone
    finally:
        child.kill()
        child.wait()
