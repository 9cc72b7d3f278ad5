"""`metamock run --egress`: outbound network for the command through a user-mode network stack.

pasta (Debian's `passt` package) or else slirp4netns (root: slirp4netns only), both unprivileged: they open
/dev/net/tun inside the run's namespaces (joined by the server's pid) and carry the command's
connections out as ordinary sockets of the caller's own, in the caller's network namespace. So they
are started from outside, by `metamock run`'s outer process, before the command starts; they
configure the tap device (address, default route) themselves.

Nothing is forwarded inward: pasta's default would bind the namespace's listening ports (the IMDS
server's among them) on the host, and the host's on the namespace's loopback; `-t/-u/-T/-U none`
turn both off. What both keep by default: the gateway address reaches the host's own loopback
(pasta: the default gateway; slirp4netns: 10.0.2.2), for a fake AWS service on the laptop.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from metamock.errors import NamespaceError

TOOLS = ("pasta", "slirp4netns")
TUN = Path("/dev/net/tun")
START_TIMEOUT = 10.0
STOP_WAIT = 2.0


def find(environ: Mapping[str, str]) -> tuple[str, ...]:
    """The user-mode stacks on PATH, in order of preference; NamespaceError (exit 2) when there is
    none or the tun device is closed to this user (then none could work)."""
    search = environ.get("PATH", os.defpath)
    found = tuple(path for tool in TOOLS if (path := shutil.which(tool, path=search)) is not None)
    if not found:
        raise NamespaceError(
            "--egress needs pasta (Debian/Ubuntu package passt) or slirp4netns on PATH; neither is "
            "installed. Without --egress the command runs with no network but the metadata service"
        )
    if not os.access(TUN, os.R_OK | os.W_OK):
        mode = _mode(TUN)
        raise NamespaceError(
            f"--egress needs {TUN} readable and writable by you ({mode}); most distributions make "
            f"it crw-rw-rw- (as root: chmod 0666 {TUN})"
        )
    return found


def _mode(path: Path) -> str:
    try:
        info = path.stat()
    except OSError as exc:
        return exc.strerror or "missing"
    return f"mode {info.st_mode & 0o777:04o}, owner uid {info.st_uid}"


@dataclass
class Egress:
    """A running user-mode stack; `stop()` ends it."""

    tool: str
    pid: int
    _exit_fd: int | None = field(default=None, repr=False)

    def stop(self) -> None:
        """slirp4netns: close its exit fd, then SIGKILL if still there. pasta: SIGKILL at once (it
        keeps no state, and takes no notice of SIGTERM: measured, still there 2 s later)."""
        if self._exit_fd is not None:
            os.close(self._exit_fd)
            self._exit_fd = None
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        deadline = time.monotonic() + STOP_WAIT
        while time.monotonic() < deadline and _reap(self.pid) is False:
            time.sleep(0.02)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        _reap(self.pid, block=True)


def _reap(pid: int, *, block: bool = False) -> bool | None:
    """True once reaped, False while running, None when it is not our child (pasta's daemon,
    adopted by a subreaper, is; elsewhere it may not be)."""
    try:
        done, _ = os.waitpid(pid, 0 if block else os.WNOHANG)
    except ChildProcessError:
        return None
    return done != 0


def start(tools: tuple[str, ...], pid: int, workdir: Path) -> Egress:
    """Attach the first fitting tool of `tools` (from find()) to the namespaces of process `pid`;
    return once the command's network is configured. NamespaceError when it fails."""
    if not _own_userns(pid):
        # Root's run has no user namespace of its own, and pasta drops to nobody (or, kept root,
        # isolates itself) before it opens the target: it cannot join one of root's here.
        tools = tuple(t for t in tools if Path(t).name != "pasta")
        if not tools:
            raise NamespaceError(
                "--egress as root needs slirp4netns (pasta cannot join a namespace of root's); "
                "install it, or run `metamock run` as another user"
            )
    tool = tools[0]
    if Path(tool).name == "slirp4netns":
        return _slirp4netns(tool, pid)
    return _pasta(tool, pid, workdir)


def _pasta(tool: str, pid: int, workdir: Path) -> Egress:
    pidfile = workdir / "pasta.pid"
    none = ("-t", "none", "-u", "none", "-T", "none", "-U", "none")
    argv = [tool, "--config-net", "--quiet", *none, "--pid", str(pidfile), str(pid)]  # joins its userns too
    try:
        # pasta returns once the namespace is configured, leaving its daemon behind.
        done = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=START_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise NamespaceError(f"--egress: pasta did not finish setting up in {START_TIMEOUT:g} s") from exc
    try:
        daemon = int(pidfile.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        daemon = None
    finally:
        pidfile.unlink(missing_ok=True)
    if done.returncode != 0 or daemon is None:
        raise NamespaceError(f"--egress: pasta failed: {_reason(done.stderr)}")
    return Egress("pasta", daemon)


def _own_userns(pid: int) -> bool:
    """Whether process `pid` is in a user namespace other than ours."""
    try:
        return Path(f"/proc/{pid}/ns/user").stat().st_ino != Path("/proc/self/ns/user").stat().st_ino
    except OSError:
        return True


def _slirp4netns(tool: str, pid: int) -> Egress:
    ready_r, ready_w = os.pipe()
    exit_r, exit_w = os.pipe()
    argv = [
        tool, "--configure", "--mtu=65520", f"--ready-fd={ready_w}", f"--exit-fd={exit_r}", str(pid), "tap0"
    ]  # fmt: skip
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            pass_fds=(ready_w, exit_r),
            text=True,
        )
    finally:
        os.close(ready_w)
        os.close(exit_r)
    readable, _, _ = select.select([ready_r], [], [], START_TIMEOUT)
    ready = os.read(ready_r, 1) if readable else b""
    os.close(ready_r)
    if ready != b"1":
        os.close(exit_w)
        proc.kill()
        _, err = proc.communicate()
        raise NamespaceError(f"--egress: slirp4netns failed: {_reason(err)}")
    assert proc.stderr is not None
    proc.stderr.close()
    return Egress("slirp4netns", proc.pid, exit_w)


def _reason(stderr: str | None) -> str:
    """The tool's last line that says something (pasta also reports its syslog failures)."""
    lines = [ln.strip() for ln in (stderr or "").splitlines() if ln.strip()]
    lines = [ln for ln in lines if "to syslog" not in ln] or lines
    return lines[-1] if lines else "no message"
