"""`metamock run -- CMD`: one command that sees EC2, in namespaces of its own; nothing left behind.

Three processes:

- The outer one (`metamock run` as the caller started it, in the caller's namespaces): makes a
  private run directory, forks the server, starts the user-mode network for `--egress` (it needs
  the caller's network), relays signals, and at the end removes whatever is left: the egress
  process, stray processes, the directory. It is a child subreaper, so nothing escapes it.
- The server (forked): enters new namespaces (metamock.namespaces), brings `lo` up and runs the
  ordinary service life cycle (metamock.lifecycle) with the redirect on, the code of `metamock
  serve --netfilter`, and RunHooks: once the server is ready, the command; its exit ends the run.
- The command: spawned through nsexec.py, which gives it a user namespace in which the caller's
  own ids come back and no power over the network namespace, then execs it.

Signals: the command stays in the caller's process group, so what the terminal sends (Ctrl-C,
Ctrl-\\, hang-up, window size) reaches it directly, once, as it would without metamock. The outer
process forwards only what was sent to it in person (kill(1), a CI runner's SIGTERM; siginfo tells
the two apart) to the server, which passes it on to the command. The server has a process group of
its own, so the terminal's signals never reach it: it stops when the command has ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path

from metamock import egress as user_network
from metamock import namespaces, nsexec, proctree
from metamock.control_socket import RUN_DIR_ENV
from metamock.errors import MetamockError, NamespaceError
from metamock.lifecycle import Hooks, run_service
from metamock.netfilter.routes import loopback_up
from metamock.service import Service
from metamock.settings import Settings
from metamock.supervisor import KILL_WAIT, ChildSpec, Restart, Supervisor, become_subreaper, exit_code

log = logging.getLogger("metamock.run")

# Relayed from the outer process to the command (via the server). SIGCHLD: the server's end.
RELAYED = (
    signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
    signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH,
)  # fmt: skip
SI_KERNEL = 0x80  # si_code of a signal the kernel sent: the terminal's, to its foreground group
NSEXEC = Path(nsexec.__file__)
REDIRECT_TOOLS = ("nft", "iptables")
SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def run_command(settings: Settings, command: Sequence[str], *, egress: bool, grace: float) -> int:
    """Run `command` in new namespaces beside a metamock server; its exit code (128+N for signal N)."""
    environ = settings.environ
    tools = user_network.find(environ) if egress else ()
    # The server's PATH gets the sbin directories (a normal user's PATH on Debian lacks them, and
    # nft and iptables live there); the command's PATH stays the caller's.
    server_path = _with_sbin(environ.get("PATH", os.defpath))
    if not any(shutil.which(t, path=server_path) for t in REDIRECT_TOOLS):
        raise NamespaceError(
            f"the redirect needs nft or iptables; neither is on PATH or in {', '.join(SBIN)}"
        )
    run_dir = Path(tempfile.mkdtemp(prefix="metamock-run-", dir=_private_parent(environ)))
    command_environ = {**environ, RUN_DIR_ENV: str(run_dir)}
    settings = dataclasses.replace(settings, netfilter=True, environ={**command_environ, "PATH": server_path})
    become_subreaper()  # the command's orphans come here if the server dies first
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {*RELAYED, signal.SIGCHLD})
    status_r, status_w = os.pipe()
    go_r, go_w = os.pipe()
    foreground = os.getpgid(0)
    sys.stdout.flush()
    sys.stderr.flush()
    server = os.fork()
    if server == 0:  # pragma: no cover - the forked server; its behaviour is tested end to end
        os.close(status_r)
        os.close(go_w)
        code = 1
        try:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            code = _server(settings, command, command_environ, status_w, go_r, foreground, grace)
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)
    os.close(status_w)
    os.close(go_r)
    running: user_network.Egress | None = None
    try:
        if os.read(status_r, 3) != b"ns\n":
            return _wait(server)  # it could not make the namespaces, and said why
        if tools:
            try:
                running = user_network.start(tools, server, run_dir)
            except NamespaceError:
                os.kill(server, signal.SIGKILL)
                _wait(server)
                raise
        os.write(go_w, b"go\n")
        return _relay(server)
    finally:
        os.close(status_r)
        os.close(go_w)
        if running is not None:
            running.stop()
        _kill_leftovers()
        shutil.rmtree(run_dir, ignore_errors=True)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def _with_sbin(path: str) -> str:
    have = path.split(os.pathsep)
    return os.pathsep.join([*have, *(d for d in SBIN if d not in have)])


def _private_parent(environ: Mapping[str, str]) -> str | None:
    """$XDG_RUNTIME_DIR when it is this user's, else the temp dir (mkdtemp makes it 0700)."""
    runtime = environ.get("XDG_RUNTIME_DIR")
    if not runtime:
        return None
    with contextlib.suppress(OSError):
        if Path(runtime).is_dir() and Path(runtime).stat().st_uid == os.geteuid():
            return runtime
    return None


def _relay(server: int) -> int:
    """Until the server ends: pass signals sent to us on to it; reap. The server's exit code."""
    while True:
        info = signal.sigtimedwait({*RELAYED, signal.SIGCHLD}, 0.5)
        if info is None or info.si_signo == signal.SIGCHLD:
            status = _reap(server)
            if status is not None:
                return exit_code(status)
            continue
        if info.si_code == SI_KERNEL:
            continue  # from the terminal to its foreground group: the command has it already
        with contextlib.suppress(ProcessLookupError):
            os.kill(server, info.si_signo)


def _reap(server: int) -> int | None:
    """Reap every exited child (the adopted ones too); the server's wait status once it is done."""
    found: int | None = None
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return found
        if pid == 0:
            return found
        if pid == server:
            found = status


def _wait(server: int) -> int:
    _, status = os.waitpid(server, 0)
    return exit_code(status)


def _kill_leftovers() -> None:
    """SIGKILL what is still below us (only when the server died before cleaning up) until none of
    it runs, or KILL_WAIT as the supervisor allows (a process in D state); reap it."""
    deadline = time.monotonic() + KILL_WAIT
    warned = False
    while True:
        _reap(-1)
        table = proctree.snapshot()
        roots = [c.pid for c in proctree.children(os.getpid())]
        live = [p for p in proctree.descendants(table, roots).values() if p.alive]
        if not live or time.monotonic() >= deadline:
            return
        if not warned:
            pids = " ".join(str(p.pid) for p in live)
            log.warning("killing %d process(es) the command left (pids %s)", len(live), pids)
            warned = True
        for proc in live:
            proctree.send(proc, signal.SIGKILL)
        time.sleep(0.01)


def _server(  # noqa: PLR0917 (one call site, right above)
    settings: Settings,
    command: Sequence[str],
    command_environ: Mapping[str, str],
    status_w: int,
    go_r: int,
    foreground: int,
    grace: float,
) -> int:
    """The forked server: namespaces, then the service with the command beside it; its exit code."""
    outer = os.getppid()
    os.setpgid(0, 0)  # out of the terminal's foreground group: Ctrl-C is the command's alone
    nsexec.set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != outer:
        return 1
    uid, gid = os.getuid(), os.getgid()
    try:
        made = namespaces.enter(uid, gid)
    except NamespaceError as exc:
        print(f"metamock run: {exc}", file=sys.stderr)
        return exc.exit_code
    os.write(status_w, b"ns\n")
    os.close(status_w)
    if os.read(go_r, 3) != b"go\n":
        return 1  # the outer process gave up (the egress stack failed, and it said so)
    os.close(go_r)
    hooks = RunHooks(_command_argv(command, made, uid, gid), command_environ, foreground, grace)
    try:
        loopback_up()
        code = asyncio.run(run_service(settings, hooks))
    except MetamockError as exc:
        print(f"metamock run: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception:
        traceback.print_exc()
        return 1
    if hooks.supervisor is None and hooks.signalled is not None:
        return 128 + hooks.signalled  # stopped before the command started
    return code


def _command_argv(command: Sequence[str], made: namespaces.Made, uid: int, gid: int) -> tuple[str, ...]:
    mapping = ("--map", str(uid), str(gid)) if made.user else ()
    return (sys.executable, "-I", "-S", str(NSEXEC), *mapping, "--", *command)


class RunHooks(Hooks):
    """The command beside the server: started once the server is ready, every signal passed on,
    and its exit (after what it left behind has been stopped within `grace`) ends the run."""

    forwarded = (signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH)
    notice_outlives_run = False

    def __init__(
        self, argv: Sequence[str], environ: Mapping[str, str], foreground: int, grace: float
    ) -> None:
        super().__init__()
        self.spec = ChildSpec(
            name="command",
            argv=tuple(argv),
            env=dict(environ),
            restart=Restart.NEVER,
            process_group=foreground,
            ends_all=True,
        )
        self.grace = grace
        self.supervisor: Supervisor | None = None
        self.signalled: int | None = None

    async def run(self, service: Service) -> int:
        supervisor = Supervisor([self.spec], grace=self.grace)
        self.supervisor = supervisor
        await supervisor.start()
        if self.signalled is not None:  # a signal came as it started
            supervisor.forward(self.signalled)
        return await supervisor.wait()

    def stop(self, signum: int) -> None:
        self.signalled = signum
        self.on_signal(signum)

    def again(self, signum: int) -> None:
        self.on_signal(signum)

    def on_signal(self, signum: int) -> None:
        if self.supervisor is not None:
            self.supervisor.forward(signum)

    async def close(self) -> None:
        if self.supervisor is not None:
            await self.supervisor.close()
