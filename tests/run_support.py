"""`metamock run` as a user types it, as root and as an unprivileged user (uid 65534).

Every run starts inside a test namespace with only `lo` (the safety rule holds even if `run` were
broken). As uid 65534: the suite's venv Python may live where that user cannot reach (pyenv under
/root, mode 0700, on these machines), so a private mount namespace bind-mounts the checkout and the
venv's site-packages into a world-readable directory and runs the distribution's Python (same minor
version, so the compiled wheels load) with PYTHONPATH on them; it also puts a 0666 /dev/net/tun
there (most distributions' mode; 0600 here), all gone with the mount namespace.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from metamock import proctree
from tests.netns import REPO, NetNS, base_env

NOBODY = 65534
SYSTEM_PYTHON = Path("/usr/bin/python3")
USERS = ("root", "nobody")
# The view for uid 65534: $1 the view dir, $2 the checkout, $3 site-packages, then the command.
VIEW = (
    "set -e; v=$1 repo=$2 site=$3; shift 3; "
    'mount --bind "$repo" "$v/repo"; mount --bind "$site" "$v/site"; '
    '[ -e "$v/tun" ] || mknod -m 666 "$v/tun" c 10 200; mount --bind "$v/tun" /dev/net/tun; '
    'cd /; exec "$@"'
)
DROP = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")


@dataclass
class User:
    """How to start `metamock ...` as this user: argv prefix (then `drop`, to become the user) and
    environment."""

    name: str
    python: str
    prefix: tuple[str, ...]
    env: dict[str, str]
    uid: int
    drop: tuple[str, ...] = ()
    tmp: Path | None = None  # its TMPDIR, where a run makes its private directory (empty after)

    def argv(self, *args: str, between: Sequence[str] = ()) -> list[str]:
        """`between`: run as root after the view is made, before becoming the user."""
        return [*self.prefix, *between, *self.drop, self.python, "-m", "metamock", *args]


@contextmanager
def as_user(name: str, **extra: str) -> Iterator[User]:
    """`root` (this process's Python) or `nobody` (uid 65534 through the view above)."""
    env = base_env(
        HOME="/nonexistent", AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null", **extra
    )
    env.pop("XDG_RUNTIME_DIR", None)
    # A TMPDIR of its own: what a run leaves there is its own, whatever else runs on the machine.
    tmp = Path(tempfile.mkdtemp(prefix="mm-run-tmp-"))
    tmp.chmod(0o1777)
    env["TMPDIR"] = str(tmp)
    try:
        yield from _user(name, env, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _user(name: str, env: dict[str, str], tmp: Path) -> Iterator[User]:
    if name == "root":
        yield User("root", sys.executable, (), env, 0, tmp=tmp)
        return
    check = subprocess.run(
        [str(SYSTEM_PYTHON), "-c", "import sys; print(sys.version_info[:2])"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert check.stdout.strip() == str(sys.version_info[:2]), (
        f"{SYSTEM_PYTHON} must be Python {sys.version_info[:2]} like the suite (for the venv's wheels): "
        f"{check.stdout or check.stderr}"
    )
    view = Path(tempfile.mkdtemp(prefix="mm-view-"))
    try:
        view.chmod(0o755)
        for sub in ("repo", "site"):
            (view / sub).mkdir()
        site = sysconfig.get_paths()["purelib"]
        prefix = (
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            VIEW,
            "view",
            str(view),
            str(REPO),
            site,
        )
        env["PYTHONPATH"] = f"{view / 'repo'}:{view / 'site'}"
        # A normal user's PATH on Debian (no sbin: nft and iptables are not on it), and none of
        # the suite's (a pyenv shim under /root, which uid 65534 cannot search).
        env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
        yield User("nobody", str(SYSTEM_PYTHON), prefix, env, NOBODY, DROP, tmp)
    finally:
        shutil.rmtree(view, ignore_errors=True)


def in_ns(ns: NetNS, argv: Sequence[str]) -> list[str]:
    """`ip netns exec NS argv...` with `ip` found on this process's PATH, not on the user's."""
    full = ns.cmd(list(argv))
    return [shutil.which(full[0]) or full[0], *full[1:]]


def run_in(
    ns: NetNS, user: User, *args: str, timeout: float = 60, between: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    """`metamock ARGS...` as `user` in `ns`, to completion."""
    return subprocess.run(
        in_ns(ns, user.argv(*args, between=between)),
        env=user.env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def start_in(ns: NetNS, user: User, *args: str, **kw: object) -> subprocess.Popen[str]:
    proc: subprocess.Popen[str] = subprocess.Popen(
        ns.cmd(user.argv(*args)),
        env=user.env,
        text=True,
        **kw,  # type: ignore[call-overload]
    )
    ns.procs.append(proc)
    return proc


def leftovers(marker: str) -> list[str]:
    """Live processes (exited ones awaiting a wait() are not) whose command line holds `marker`."""
    found = []
    for pid, proc in proctree.snapshot().items():
        if not proc.alive or pid == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            found.append(f"pid {pid}: {cmdline.strip()}")
    return found


def left_in_tmp(user: User) -> list[str]:
    """What runs left in the user's TMPDIR (a run makes its private directory there)."""
    assert user.tmp is not None
    return sorted(str(p) for p in user.tmp.iterdir())


def wait_gone(marker: str, timeout: float = 10.0) -> list[str]:
    """The processes holding `marker` still there after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        left = leftovers(marker)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def send(proc: subprocess.Popen[str], signum: int = signal.SIGTERM) -> None:
    """Signal `metamock run` itself: the process `ip netns exec` became (it execs, keeping the pid)."""
    proc.send_signal(signum)
