"""Supervise child processes: start in order, restart with backoff, forward signals, stop in
reverse order within a grace period, and reap every child, orphans included.

Children are spawned with posix_spawn (own process group, default signal dispositions, empty
signal mask) and reaped by one SIGCHLD handler: as PID 1 or as a child subreaper it collects the
orphans of their trees too. It waits for those pids only, never waitpid(-1): that would also take
the exit status of a tool other code here runs meanwhile (`nft` through subprocess, in a thread),
which subprocess then reports as 0, a failed command taken for success. Such tools stay in this
process's own process group (subprocess's default), which is how the reaper tells them apart.

A stop ends the whole tree the programs started, not only the programs: after the programs
have stopped (in order), what they left behind (their process groups, daemons that left those
with `setsid`, which as subreaper or PID 1 become our children) gets the same signal, and
whatever is still there when `grace` is up is SIGKILLed and reaped. The tree is read from /proc
by parent links (`metamock.proctree`), as no process group or session holds all of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import enum
import logging
import os
import shutil
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from metamock import proctree
from metamock.clock import Clock, SystemClock

log = logging.getLogger("metamock.supervisor")

PR_SET_CHILD_SUBREAPER = 36
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
# Dispositions a child must not inherit: everything catchable goes back to SIG_DFL.
_RESET = tuple(s for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP))
POLL = 0.05  # seconds between looks at what is left of the tree while it stops
KILL_WAIT = 5.0  # after SIGKILL: how long to wait for the tree to go (a process in D state)


class Restart(enum.StrEnum):
    ALWAYS = "always"
    ON_FAILURE = "on-failure"
    NEVER = "never"


@dataclass(frozen=True)
class Backoff:
    """Restart delays: initial * factor**(n-1), capped; a long enough run forgives the past."""

    initial: float = 1.0
    factor: float = 2.0
    maximum: float = 30.0
    reset_after: float = 60.0

    def delay(self, restarts: int) -> float:
        return min(self.maximum, self.initial * self.factor ** max(0, restarts - 1))


@dataclass(frozen=True)
class ChildSpec:
    """What to run: argv (never through a shell), its full environment, and its policy."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(repr=False)  # may hold credential URIs: kept out of logs
    restart: Restart = Restart.ON_FAILURE
    before_start: Callable[[], None] | None = None
    # 0: a process group of its own. Else this group: `metamock run` keeps its command in the
    # terminal's foreground group, so Ctrl-C reaches it from the terminal, once.
    process_group: int = 0
    # Its exit, whatever the code, ends the supervision (`metamock run`: the command is the run).
    ends_all: bool = False


def exit_code(status: int) -> int:
    """A wait status as a shell reports it: the exit code, or 128+N when signal N killed it."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def should_restart(policy: Restart, code: int) -> bool:
    return policy is Restart.ALWAYS or (policy is Restart.ON_FAILURE and code != 0)


def become_subreaper() -> bool:
    """Ask the kernel to give this process the orphans of its descendants (not needed as PID 1)."""
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


def _kill_own_group(child: _Child) -> None:
    """SIGKILL the child's process group when it is its own; a child in a group it joined (the
    terminal's, under `metamock run`) alone: that group holds the user's shell job too."""
    assert child.pid is not None
    if child.spec.process_group:
        os.kill(child.pid, signal.SIGKILL)
    else:
        os.killpg(child.pid, signal.SIGKILL)


class _Child:
    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self.pid: int | None = None
        self.pgid: int | None = None  # kept after exit: the group may outlive its leader
        self.exited: asyncio.Future[int] | None = None
        self.starts = 0
        self.restarts = 0
        self.started_at = 0.0
        self.stop_signal: int | None = None


class Supervisor:
    """`await start()`, then `await wait()` (returns the exit code); `request_stop(sig)` ends it."""

    def __init__(
        self,
        specs: Sequence[ChildSpec],
        *,
        grace: float = 10.0,
        backoff: Backoff | None = None,
        clock: Clock | None = None,
    ) -> None:
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"child names must be unique: {names}")
        self.children = [_Child(spec) for spec in specs]
        self.grace = grace
        self.backoff = backoff or Backoff()
        self.clock = clock or SystemClock()
        self._by_pid: dict[int, _Child] = {}
        self._keepers: list[asyncio.Task[None]] = []
        self._stop_signal: int | None = None
        self._stopping = asyncio.Event()
        self._failed: asyncio.Future[int] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subreaper = False
        # This process's children from before start() (a test runner's, say): not the programs'.
        self._foreign: set[tuple[int, int]] = set()
        self._group = os.getpgid(0)
        self.orphans_reaped = 0

    async def start(self) -> None:
        """Install the reaper, then start every child in order."""
        self._loop = asyncio.get_running_loop()
        self._failed = self._loop.create_future()
        if os.getpid() != 1:
            self._subreaper = become_subreaper()
            if not self._subreaper:
                log.warning("could not become a child subreaper; orphans will go to PID 1")
        self._foreign = {(p.pid, p.start) for p in proctree.children(os.getpid())}
        self._loop.add_signal_handler(signal.SIGCHLD, self._reap)
        for child in self.children:
            self._launch(child)
        self._keepers = [asyncio.create_task(self._keep(c)) for c in self.children]

    def forward(self, signum: int) -> None:
        """Send `signum` to every running child (its main process)."""
        for child in self.children:
            if child.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signum)

    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        if self._stop_signal is None:
            self._stop_signal = signum
            self._stopping.set()

    async def wait(self) -> int:
        """Run until a stop is requested or a child fails for good; stop all; the exit code."""
        assert self._failed is not None, "start() first"
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            waiters: list[asyncio.Future[Any]] = [stopping, self._failed]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        failed = self._failed.result() if self._failed.done() else None
        self.request_stop(signal.SIGTERM)
        assert self._stop_signal is not None
        code = await self._stop_all(self._stop_signal)
        return failed if failed is not None else code

    def tree(self) -> dict[int, proctree.Proc]:
        """Every process of the programs' trees still there, exited-but-unreaped ones included.

        Its roots are this process's children: the programs, and the orphans their trees left
        (a subreaper and PID 1 adopt them). Not roots: children that were here before start(),
        and children in this process's own group (tools it runs itself, `nft` say, are spawned
        without a group of their own, while every program gets one).
        """
        table = proctree.snapshot()
        roots = [p.pid for p in proctree.children(os.getpid()) if p.pid in self._by_pid or self._adopted(p)]
        return proctree.descendants(table, roots)

    def _adopted(self, proc: proctree.Proc) -> bool:
        """Whether this child of ours, not a program, is of the programs' trees (an orphan)."""
        return proc.pgid != self._group and (proc.pid, proc.start) not in self._foreign

    async def close(self) -> None:
        """Kill what still runs (after wait() nothing does), stop reaping, undo the subreaper."""
        for task in self._keepers:
            task.cancel()
        await asyncio.gather(*self._keepers, return_exceptions=True)
        if self._loop is not None:
            await self._kill_tree(asyncio.get_running_loop().time() + KILL_WAIT)
        for child in self.children:
            if child.pid is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    _kill_own_group(child)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(child.pid, 0)  # noqa: ASYNC222 - SIGKILLed just above
        if self._loop is not None:
            self._loop.remove_signal_handler(signal.SIGCHLD)
            self._reap()  # whatever exited meanwhile
        if self._subreaper:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
            self._subreaper = False

    # ---- internals ------------------------------------------------------------------------

    def _launch(self, child: _Child) -> None:
        assert self._loop is not None
        spec = child.spec
        child.exited = self._loop.create_future()
        child.started_at = self.clock.monotonic()
        child.starts += 1
        try:
            if spec.before_start is not None:
                spec.before_start()
            path = shutil.which(spec.argv[0], path=spec.env.get("PATH", os.defpath))
            if path is None:
                raise FileNotFoundError(2, "command not found", spec.argv[0])
            pid = os.posix_spawn(
                path,
                list(spec.argv),
                dict(spec.env),
                setpgroup=spec.process_group,
                setsigmask=(),
                setsigdef=_RESET,
            )
        except OSError as exc:
            log.error("%s: cannot start %s: %s", spec.name, spec.argv[0], exc.strerror or exc)
            child.exited.set_result(127 if isinstance(exc, FileNotFoundError) else 126)
            return
        child.pid, child.pgid = pid, spec.process_group or pid
        self._by_pid[pid] = child
        log.info("%s: started (pid %d)", spec.name, pid)

    def _reap(self) -> None:
        """Collect the programs that exited and the exited orphans of their trees."""
        for pid in list(self._by_pid):
            self._collect(pid)
        for proc in proctree.children(os.getpid()):
            if not proc.alive and proc.pid not in self._by_pid and self._adopted(proc):
                self._collect(proc.pid)

    def _collect(self, pid: int) -> None:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            if pid not in self._by_pid:
                return  # an orphan someone else took meanwhile
            # A program reaped elsewhere (nothing here does that): its code is lost; ending
            # its wait beats a stop that never finishes.
            done, status = pid, 0
        if done == 0:
            return
        child = self._by_pid.pop(pid, None)
        if child is None:
            self.orphans_reaped += 1
            log.debug("reaped orphan pid %d", pid)
            return
        child.pid = None
        if child.exited is not None and not child.exited.done():
            child.exited.set_result(exit_code(status))

    async def _keep(self, child: _Child) -> None:
        """Watch one child; restart it per its policy until a stop begins."""
        while True:
            assert child.exited is not None
            code = await child.exited
            if self._stopping.is_set():
                return
            spec = child.spec
            if spec.ends_all:
                log.info("%s: exited (code %d)", spec.name, code)
                assert self._failed is not None
                if not self._failed.done():
                    self._failed.set_result(code)
                return
            if not should_restart(spec.restart, code):
                if code != 0:
                    log.error("%s: exited with code %d; not restarting (%s)", spec.name, code, spec.restart)
                    assert self._failed is not None
                    if not self._failed.done():
                        self._failed.set_result(code)
                else:
                    log.info("%s: finished (code 0)", spec.name)
                return
            if self.clock.monotonic() - child.started_at >= self.backoff.reset_after:
                child.restarts = 0
            child.restarts += 1
            delay = self.backoff.delay(child.restarts)
            log.warning("%s: exited with code %d; restarting in %.1fs", spec.name, code, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            if self._stopping.is_set():
                return
            self._launch(child)

    async def _stop_all(self, signum: int) -> int:
        """Signal children in reverse start order, each awaited, then what their trees left, all
        within `grace`; then SIGKILL whatever of the trees is left, and reap it."""
        deadline = self.clock.monotonic() + self.grace
        outcome = 0
        running = [c for c in reversed(self.children) if c.pid is not None]
        for child in running:
            assert child.exited is not None
            child.stop_signal = signum
            if child.pid is not None:  # it may have exited while an earlier one was stopping
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signum)
            remaining = deadline - self.clock.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(child.exited), max(0.0, remaining))
            if not child.exited.done():
                break
        if all(c.exited is not None and c.exited.done() for c in running):
            await self._stop_leftovers(signum, deadline)
        for child in running:
            assert child.exited is not None
            if not child.exited.done() and child.pid is not None:
                log.warning("%s: still running after %gs; killing it", child.spec.name, self.grace)
                with contextlib.suppress(ProcessLookupError):
                    _kill_own_group(child)
        left = [p for p in self.tree().values() if p.alive and p.pid not in self._by_pid]
        if left:
            log.warning(
                "%d process(es) the programs started still running after %gs; killing them (pids %s)",
                len(left),
                self.grace,
                " ".join(str(p.pid) for p in left),
            )
        await self._kill_tree(asyncio.get_running_loop().time() + KILL_WAIT)
        for child in running:
            assert child.exited is not None
            code = await child.exited
            clean = code in (0, 128 + signum)
            log.info("%s: stopped (code %d)", child.spec.name, code)
            if not clean and outcome == 0:
                outcome = code
        return outcome

    async def _stop_leftovers(self, signum: int, deadline: float) -> None:
        """The programs are gone: send `signum` to what they left, wait for it until `deadline`.

        What a leftover forks while it stops is found at the next look and signalled too.
        """
        signalled: set[tuple[int, int]] = set()
        while True:
            self._reap()
            live = [p for p in self.tree().values() if p.alive]
            if not live:
                return
            fresh = [p for p in live if (p.pid, p.start) not in signalled]
            if fresh:
                log.info(
                    "stopping %d process(es) the programs left behind (pids %s)",
                    len(fresh),
                    " ".join(str(p.pid) for p in fresh),
                )
            for proc in fresh:
                signalled.add((proc.pid, proc.start))
                proctree.send(proc, signum)
            remaining = deadline - self.clock.monotonic()
            if remaining <= 0:
                return
            await asyncio.sleep(min(POLL, remaining))

    async def _kill_tree(self, until: float) -> None:
        """SIGKILL the whole tree until none of it runs (or `until`, loop time), reaping it."""
        loop = asyncio.get_running_loop()
        while True:
            self._reap()
            live = [p for p in self.tree().values() if p.alive]
            if not live:
                return
            if loop.time() >= until:
                log.warning("pids %s survive SIGKILL (uninterruptible?)", " ".join(str(p.pid) for p in live))
                return
            for proc in live:
                proctree.send(proc, signal.SIGKILL)
            await asyncio.sleep(0.01)
