"""The last steps before `metamock run`'s command, in the process that becomes it.

Standard library only, no imports from metamock: it runs as a file, `python -I -S nsexec.py`
(about 10 ms; the user's PYTHONPATH and site-packages play no part), between the server's
posix_spawn and the command's exec. Also the one copy of unshare(2) and the id maps, which
metamock.namespaces uses for the server's namespaces.

    nsexec.py [--map UID GID] -- CMD [ARGS...]

`--map`: a user namespace of its own in which the caller's outer ids come back (uid 0 of the
server's namespace is the caller's own uid outside, so `id -u` is the same inside and out), and
no capability over the network namespace, which the server's user namespace owns.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import sys
from pathlib import Path

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1


def unshare(flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def write_id_maps(proc: Path, *, inside: tuple[int, int], outside_uid: int, outside_gid: int) -> None:
    """Map uid `inside[0]` and gid `inside[1]` to the parent namespace's `outside_uid`/`outside_gid`:
    one id each, the only map an unprivileged process may write, and only after denying setgroups."""
    (proc / "setgroups").write_text("deny", encoding="ascii")
    (proc / "uid_map").write_text(f"{inside[0]} {outside_uid} 1\n", encoding="ascii")
    (proc / "gid_map").write_text(f"{inside[1]} {outside_gid} 1\n", encoding="ascii")


def set_parent_death_signal(signum: int) -> None:
    """Have the kernel send `signum` when the parent (its thread that forked us) exits."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)


def main(argv: list[str]) -> int:
    mapped: tuple[int, int] | None = None
    if argv[:1] == ["--map"]:
        mapped, argv = (int(argv[1]), int(argv[2])), argv[3:]
    if argv[:1] != ["--"] or len(argv) < 2:
        print("usage: nsexec.py [--map UID GID] -- CMD [ARGS...]", file=sys.stderr)
        return 2
    command = argv[1:]
    server = os.getppid()
    if mapped is not None:
        uid, gid = mapped
        try:
            unshare(CLONE_NEWUSER)
            # The caller's ids are 0 in the server's namespace; here they get their own numbers back.
            write_id_maps(Path("/proc/self"), inside=(uid, gid), outside_uid=0, outside_gid=0)
        except OSError as exc:
            print(f"metamock run: cannot map your ids for the command: {exc.strerror}", file=sys.stderr)
            return 126
    # Gone with the server (it never outlives it by design; this covers a SIGKILLed one).
    set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != server:
        return 137
    # Python ignores these two at start; an ignored signal stays ignored across exec.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    # Looked up as a shell does: a PATH directory this user may not search is skipped, where
    # os.execvp would report its EACCES for a command that is nowhere.
    path = shutil.which(command[0])
    if path is None:
        print(f"metamock run: {command[0]}: command not found", file=sys.stderr)
        return 127
    try:
        os.execv(path, command)  # noqa: S606 (the command as given, never through a shell)
    except OSError as exc:
        print(f"metamock run: {command[0]}: {exc.strerror}", file=sys.stderr)
        return 126


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
