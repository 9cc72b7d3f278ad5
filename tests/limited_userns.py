"""Run a command as root of a new user namespace that maps root and uid/gid 65534 and allows no
user namespace below it (`user.max_user_namespaces = 0` there; the machine's own limit is untouched).

    python tests/limited_userns.py CMD [ARGS...]    (as root)

What `metamock run` meets where a distribution turns user namespaces off, without changing the
machine. Only root may write a map of two ids, so the parent writes the child's maps.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from metamock.nsexec import CLONE_NEWUSER, unshare


def main(argv: list[str]) -> int:
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    child = os.fork()
    if child == 0:
        unshare(CLONE_NEWUSER)
        os.write(ready_w, b"x")
        os.read(go_r, 1)
        Path("/proc/sys/user/max_user_namespaces").write_text("0", encoding="ascii")
        os.execvp(argv[0], argv)  # noqa: S606
    os.read(ready_r, 1)
    for name in ("uid_map", "gid_map"):
        Path(f"/proc/{child}/{name}").write_text("0 0 1\n65534 65534 1\n", encoding="ascii")
    os.write(go_w, b"x")
    _, status = os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
