"""Where a server's control socket lives, and the client's side of it (blocking, standard library).

Kept apart from the server (metamock.control, which needs asyncio) so `metamock trigger` starts
fast. One socket per (network namespace, port): two servers on the same port in two namespaces
(two tasks' sidecars on one host sharing /run) are two servers, and a filesystem socket is reachable
from every namespace, so the name carries the namespace and each request says which one it means.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import socket
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from metamock.errors import MetamockError, PrivilegeError

MAX_LINE = 64 * 1024
RUN_DIR = Path("/run/metamock")
# Where the runtime files go instead of RUN_DIR (`metamock run` points it at a private directory of
# its own: inside a user namespace /run/metamock belongs to nobody there).
RUN_DIR_ENV = "METAMOCK_RUN_DIR"
TMP_PREFIX = "/tmp/metamock-"  # noqa: S108 (a private 0700 directory per uid, checked)


def run_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The directory for the control socket and the netfilter record: $METAMOCK_RUN_DIR or RUN_DIR."""
    given = (os.environ if environ is None else environ).get(RUN_DIR_ENV)
    return Path(given) if given else RUN_DIR


def netns_key(ns_file: Path = Path("/proc/self/ns/net")) -> str | None:
    """This process's network namespace as `<device>-<inode>` of its nsfs file, or None.

    Unique among live namespaces. The kernel may give a destroyed namespace's inode to a new one;
    a socket left by a server of the old one is then found under the new one's name, but nobody
    listens on it: the server replaces it (ControlServer.start) and the client says it is stale.
    """
    try:
        info = ns_file.stat()
    except OSError:
        return None
    return f"{info.st_dev}-{info.st_ino}"


def socket_name(port: int, netns: str | None) -> str:
    return f"control-{port}-net{netns}.sock" if netns else f"control-{port}.sock"


def socket_candidates(
    port: int, environ: Mapping[str, str], uid: int | None = None, netns: str | None = None
) -> list[Path]:
    """Where the control socket of the server on `port` lives, in order of preference.

    `netns` defaults to this process's network namespace."""
    uid = os.geteuid() if uid is None else uid
    name = socket_name(port, netns_key() if netns is None else netns)
    dirs = [run_dir(environ)]
    if environ.get("XDG_RUNTIME_DIR"):
        dirs.append(Path(environ["XDG_RUNTIME_DIR"]) / "metamock")
    dirs.append(Path(f"{TMP_PREFIX}{uid}"))
    return [d / name for d in dirs]


def private_dir(directory: Path) -> bool:
    """Create `directory` (0700) or accept it when it is ours and nobody else can write in it."""
    try:
        directory.mkdir(mode=0o700, exist_ok=True)
        info = directory.stat()
    except OSError:
        return False
    others_write = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    return info.st_uid == os.geteuid() and not others_write and os.access(directory, os.W_OK)


def choose_path(port: int, environ: Mapping[str, str]) -> Path:
    """Where a server on `port` puts its socket: the first candidate whose directory we can make
    private; MetamockError when none."""
    for path in socket_candidates(port, environ):
        if private_dir(path.parent):
            return path
    raise MetamockError("no private directory for the control socket (/run, $XDG_RUNTIME_DIR, /tmp)")


def find_socket(port: int, environ: Mapping[str, str]) -> Path | None:
    """The first candidate that exists as a socket (what `metamock trigger` connects to)."""
    for path in socket_candidates(port, environ):
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(path.stat().st_mode):
                return path
    return None


def _owner(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def locate_socket(port: int, environ: Mapping[str, str]) -> Path:
    """The control socket of this namespace's server on `port`, or an error saying why not:
    none anywhere (MetamockError), or one that belongs to another user (PrivilegeError, exit 2)."""
    me = os.geteuid()
    own = socket_candidates(port, environ)
    # Servers of other users keep theirs in /tmp/metamock-<uid>; root may use them, others are
    # told whose they are rather than "no socket".
    tmp = Path(TMP_PREFIX).parent
    others = sorted(
        d / own[0].name for d in tmp.glob(f"{Path(TMP_PREFIX).name}[0-9]*") if d != own[-1].parent
    )
    blocked: list[str] = []
    found: list[Path] = []
    for path in [*own, *others]:
        try:
            info = path.stat()
        except PermissionError:
            with contextlib.suppress(OSError):
                blocked.append(f"{path.parent} belongs to {_owner(path.parent.stat().st_uid)}")
            continue
        except OSError:
            continue
        if not stat.S_ISSOCK(info.st_mode):
            continue
        if me not in (0, info.st_uid):
            raise PrivilegeError(
                f"the control socket {path} belongs to {_owner(info.st_uid)}, not to you (uid {me}): "
                "permission denied; run `metamock trigger` as that user or as root"
            )
        if path in own:
            return path
        if _private_to_owner(path):
            found.append(path)
    if len(found) == 1:
        return found[0]
    if found:
        names = ", ".join(str(p) for p in found)
        raise MetamockError(f"several control sockets for port {port} ({names}); pick one with --socket")
    if blocked:
        raise PrivilegeError(
            f"no control socket for port {port} that you can reach: {'; '.join(blocked)}, permission "
            "denied. If the server runs as that user, run `metamock trigger` as that user or as root"
        )
    places = ", ".join(str(p) for p in own)
    raise MetamockError(
        f"no metamock control socket for port {port} in this network namespace (looked at {places})"
    )


def _private_to_owner(path: Path) -> bool:
    """Another user's socket is used (by root) only in a directory that is that user's and private."""
    try:
        directory, sock = path.parent.stat(), path.stat()
    except OSError:
        return False
    loose = directory.st_mode & (stat.S_IRWXG | stat.S_IRWXO)
    return (
        directory.st_uid == sock.st_uid
        and f"{TMP_PREFIX}{directory.st_uid}" == str(path.parent)
        and not loose
    )


def encode(message: Mapping[str, Any]) -> bytes:
    return json.dumps(message).encode() + b"\n"


def call(
    path: Path, request: Mapping[str, Any], timeout: float = 5.0, netns: str | None = None
) -> dict[str, Any]:
    """Send one request to the server at `path` and return its answer (blocking, stdlib only).

    With `netns`, the request says which namespace it means, and a server in another refuses it."""
    message = {**request, "netns": netns} if netns else dict(request)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(encode(message))
            data = b""
            while not data.endswith(b"\n") and len(data) <= MAX_LINE:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except ConnectionRefusedError as exc:
        raise MetamockError(f"no server listens on {path} (left behind by a server that stopped?)") from exc
    except PermissionError as exc:
        owner = ""
        with contextlib.suppress(OSError):
            owner = f" (it belongs to {_owner(path.stat().st_uid)})"
        raise PrivilegeError(
            f"cannot talk to the server at {path}{owner}: permission denied; run as its user or as root"
        ) from exc
    except OSError as exc:
        raise MetamockError(f"cannot talk to the server at {path}: {exc.strerror or exc}") from exc
    try:
        answer = json.loads(data)
    except json.JSONDecodeError as exc:
        raise MetamockError(f"the server at {path} answered something that is not JSON") from exc
    if not isinstance(answer, dict):
        raise MetamockError(f"the server at {path} answered something that is not an object")
    return answer
