"""The supervisor with plain commands: order, restarts with backoff, signals, grace, reaping."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from metamock.supervisor import Backoff, ChildSpec, Restart, Supervisor, exit_code, should_restart

FAST = Backoff(initial=0.1, factor=2.0, maximum=0.4, reset_after=60.0)
ENV = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}


def script(tmp_path: Path, name: str, body: str) -> tuple[str, ...]:
    path = tmp_path / f"{name}.sh"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return (str(path),)


def spec(name: str, argv: tuple[str, ...], restart: Restart = Restart.ON_FAILURE) -> ChildSpec:
    return ChildSpec(name=name, argv=argv, env={**ENV, "OUT": name}, restart=restart)


def zombies_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z" and int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


async def until(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.02)


@pytest.fixture
async def run_sup() -> AsyncIterator[list[Supervisor]]:
    started: list[Supervisor] = []
    yield started
    for sup in started:
        sup.request_stop()
        await sup.close()


async def start(holder: list[Supervisor], *specs: ChildSpec, grace: float = 5.0) -> Supervisor:
    sup = Supervisor(specs, grace=grace, backoff=FAST)
    holder.append(sup)
    await sup.start()
    return sup


def test_backoff_grows_and_is_capped() -> None:
    backoff = Backoff(initial=1.0, factor=2.0, maximum=30.0)
    assert [backoff.delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


def test_exit_codes_and_policies() -> None:
    assert exit_code(3 << 8) == 3
    assert exit_code(signal.SIGKILL) == 137
    assert should_restart(Restart.ALWAYS, 0)
    assert should_restart(Restart.ON_FAILURE, 1)
    assert not should_restart(Restart.ON_FAILURE, 0)
    assert not should_restart(Restart.NEVER, 1)


async def test_stop_in_reverse_order_exit_0(tmp_path: Path, run_sup: list[Supervisor]) -> None:
    log = tmp_path / "log"
    body = f"""trap 'echo "$OUT term $(date +%s%N)" >> {log}; sleep 0.3; echo "$OUT gone" >> {log}; exit 0' TERM
echo "$OUT up" >> {log}
while :; do sleep 0.05; done
"""
    sup = await start(run_sup, *(spec(n, script(tmp_path, n, body)) for n in ("a", "b", "c")))
    await until(lambda: log.exists() and log.read_text().count("up") == 3)
    sup.request_stop(signal.SIGTERM)
    assert await sup.wait() == 0
    events = [line.split()[:2] for line in log.read_text().splitlines() if "up" not in line]
    assert events == [
        ["c", "term"],
        ["c", "gone"],
        ["b", "term"],
        ["b", "gone"],
        ["a", "term"],
        ["a", "gone"],
    ]


async def test_a_child_ignoring_sigterm_is_killed_after_grace(
    tmp_path: Path, run_sup: list[Supervisor]
) -> None:
    stubborn = script(tmp_path, "stubborn", "trap '' TERM\nwhile :; do sleep 0.05; done\n")
    polite = script(tmp_path, "polite", "exec sleep 60\n")
    sup = await start(run_sup, spec("polite", polite), spec("stubborn", stubborn), grace=0.5)
    await asyncio.sleep(0.2)
    began = time.monotonic()
    sup.request_stop(signal.SIGTERM)
    assert await sup.wait() == 137
    assert 0.5 <= time.monotonic() - began < 3


async def test_crashing_child_restarts_with_growing_delays(tmp_path: Path, run_sup: list[Supervisor]) -> None:
    starts = tmp_path / "starts"
    crash = script(tmp_path, "crash", f"date +%s.%N >> {starts}\nexit 3\n")
    sup = await start(run_sup, spec("crash", crash))
    await until(lambda: starts.exists() and len(starts.read_text().split()) >= 5)
    times = [float(t) for t in starts.read_text().split()]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # 0.1, 0.2, 0.4, 0.4 (capped), plus process start-up time, which a loaded CI machine stretches:
    # the lower bounds prove the backoff, the upper ones allow up to 0.35 s of start-up.
    assert 0.09 < gaps[0] < 0.45
    assert 0.19 < gaps[1] < 0.55
    assert 0.39 < gaps[2] < 0.75
    assert 0.39 < gaps[3] < 0.75  # uncapped it would be 0.8 or more
    sup.request_stop()
    assert await sup.wait() == 0  # in backoff at the stop: nothing failed to stop


async def test_never_exits_with_the_failed_childs_code(tmp_path: Path, run_sup: list[Supervisor]) -> None:
    log = tmp_path / "log"
    other = script(
        tmp_path, "other", f"trap 'echo term >> {log}; exit 0' TERM\nwhile :; do sleep 0.05; done\n"
    )
    fail = script(tmp_path, "fail", "sleep 0.2\nexit 3\n")
    sup = await start(run_sup, spec("other", other, Restart.NEVER), spec("fail", fail, Restart.NEVER))
    assert await asyncio.wait_for(sup.wait(), 10) == 3
    assert log.read_text() == "term\n"


async def test_killed_by_a_signal_is_128_plus_n(tmp_path: Path, run_sup: list[Supervisor]) -> None:
    die = script(tmp_path, "die", "sleep 0.1\nkill -USR1 $$\nsleep 5\n")
    sup = await start(run_sup, spec("die", die, Restart.NEVER))
    assert await asyncio.wait_for(sup.wait(), 10) == 128 + signal.SIGUSR1


async def test_always_restarts_a_clean_exit_on_failure_does_not(
    tmp_path: Path, run_sup: list[Supervisor]
) -> None:
    counts = tmp_path / "counts"
    body = f'echo "$OUT" >> {counts}\nexit 0\n'
    sup = await start(
        run_sup,
        spec("always", script(tmp_path, "always", body), Restart.ALWAYS),
        spec("once", script(tmp_path, "once", body), Restart.ON_FAILURE),
    )
    await until(lambda: counts.exists() and counts.read_text().count("always") >= 3)
    assert counts.read_text().count("once") == 1
    sup.request_stop()
    assert await sup.wait() == 0


async def test_signals_are_forwarded(tmp_path: Path, run_sup: list[Supervisor]) -> None:
    log = tmp_path / "log"
    body = f"trap 'echo \"$OUT hup\" >> {log}' HUP\ntrap 'echo \"$OUT quit\" >> {log}' QUIT\n"
    body += "while :; do sleep 0.05; done\n"
    sup = await start(run_sup, spec("a", script(tmp_path, "a", body)), spec("b", script(tmp_path, "b", body)))
    await asyncio.sleep(0.2)
    sup.forward(signal.SIGHUP)
    sup.forward(signal.SIGQUIT)
    await until(lambda: log.exists() and len(log.read_text().splitlines()) == 4)
    assert sorted(log.read_text().splitlines()) == ["a hup", "a quit", "b hup", "b quit"]
    sup.request_stop()
    assert await sup.wait() == 0


async def test_orphans_are_reaped_as_subreaper(tmp_path: Path, run_sup: list[Supervisor]) -> None:
    orphaner = script(tmp_path, "orphaner", "sleep 0.3 &\nsleep 0.3 &\nexit 0\n")
    sup = await start(run_sup, spec("orphaner", orphaner))
    await until(lambda: sup.orphans_reaped >= 2)  # earlier tests may leave more to reap
    assert zombies_of(os.getpid()) == []
    sup.request_stop()
    assert await sup.wait() == 0


async def test_children_get_exactly_their_environment(tmp_path: Path, run_sup: list[Supervisor]) -> None:
    out = tmp_path / "env"
    dump = script(tmp_path, "dump", f"exec env -0 > {out}\n")
    env = {**ENV, "X": "it's $(not run)\nnext", "Y": ""}
    sup = await start(run_sup, ChildSpec("dump", dump, env, Restart.NEVER))
    await until(lambda: out.exists() and out.stat().st_size > 0)
    await asyncio.sleep(0.1)
    got = dict(entry.split("=", 1) for entry in out.read_text().split("\0") if entry)
    got.pop("PWD", None)  # sh may add these
    got.pop("SHLVL", None)
    assert got == env
    sup.request_stop()
    assert await sup.wait() == 0


async def test_missing_command_is_127(run_sup: list[Supervisor]) -> None:
    sup = await start(run_sup, spec("ghost", ("/nonexistent/agent",), Restart.NEVER))
    assert await asyncio.wait_for(sup.wait(), 5) == 127


async def test_the_whole_tree_is_stopped_setsid_daemons_included(
    tmp_path: Path, run_sup: list[Supervisor]
) -> None:
    log = tmp_path / "log"
    daemon = f"trap 'echo daemon term >> {log}; exit 0' TERM; echo daemon up >> {log}; while :; do sleep 0.05; done"
    body = f'setsid sh -c "{daemon}" &\n(sleep 60 &)\nexec sleep 60\n'
    sup = await start(run_sup, spec("p", script(tmp_path, "p", body)), grace=5.0)
    await until(lambda: log.exists() and "daemon up" in log.read_text())
    await until(lambda: len([p for p in sup.tree().values() if p.alive]) >= 4)  # p, 2 sleeps, daemon
    began = time.monotonic()
    sup.request_stop(signal.SIGTERM)
    assert await sup.wait() == 0
    assert time.monotonic() - began < 2  # all took the SIGTERM: no wait for the grace
    assert "daemon term" in log.read_text()
    assert sup.tree() == {}
    assert zombies_of(os.getpid()) == []


async def test_a_daemon_ignoring_sigterm_is_killed_when_the_grace_is_up(
    tmp_path: Path, run_sup: list[Supervisor]
) -> None:
    up = tmp_path / "up"
    body = f"setsid sh -c 'trap \"\" TERM; touch {up}; while :; do sleep 0.05; done' &\nexec sleep 60\n"
    sup = await start(run_sup, spec("p", script(tmp_path, "p", body)), grace=1.0)
    await until(up.exists)
    began = time.monotonic()
    sup.request_stop(signal.SIGTERM)
    assert await sup.wait() == 0  # the program stopped on the SIGTERM
    assert 0.9 < time.monotonic() - began < 2.5
    assert sup.tree() == {}
    assert zombies_of(os.getpid()) == []


async def test_processes_the_programs_did_not_start_are_left_alone(
    tmp_path: Path, run_sup: list[Supervisor]
) -> None:
    # One from before start() in a session of its own, one from after in this process's group
    # (how metamock runs its own tools): neither is part of the programs' tree.
    before = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        sup = await start(run_sup, spec("p", script(tmp_path, "p", "exec sleep 60\n")))
        after = subprocess.Popen(["sleep", "60"])
        try:
            assert before.pid not in sup.tree()
            assert after.pid not in sup.tree()
            sup.request_stop(signal.SIGTERM)
            assert await sup.wait() == 0
            assert before.poll() is None
            assert after.poll() is None
        finally:
            after.kill()
            after.wait()  # the supervisor's reaper may win: then wait() finds nothing (code 0)
    finally:
        before.kill()
        before.wait()


async def test_a_tool_run_meanwhile_keeps_its_exit_code(tmp_path: Path, run_sup: list[Supervisor]) -> None:
    # How the netfilter code runs nft/iptables while the sidecar supervises: subprocess, in a
    # thread. A reaper calling waitpid(-1) took their status, and subprocess then said 0.
    sup = await start(run_sup, spec("idle", ("/bin/sleep", "60")))

    def tool() -> int:
        return subprocess.run(["sh", "-c", "exit 3"], capture_output=True, timeout=10, check=False).returncode

    codes = [await asyncio.to_thread(tool) for _ in range(100)]
    assert codes == [3] * 100
    sup.request_stop()
    assert await sup.wait() == 0
