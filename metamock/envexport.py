"""Re-export the ECS variables of another process: read its environ, filter, render, write.

Values are bytes from start to finish (an environment is bytes, not text); each renderer quotes
them so that its consumer gets back exactly those bytes and never executes or expands anything.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from metamock.errors import EnvironmentReadError, SettingsError

# What ECS/Fargate injects into each container's initial process (PROTOCOL.md §5).
DEFAULT_ALLOW = (
    "AWS_CONTAINER_CREDENTIALS_*",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN*",
    "ECS_CONTAINER_METADATA_URI*",
    "ECS_AGENT_URI",
    "AWS_EXECUTION_ENV",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
)
# Static keys override every other credential source of an SDK: carried only when named exactly.
STATIC_KEYS = frozenset(
    {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"}
)
# A process carrying one of these is an ECS container's process (used by `--pid auto`).
ECS_MARKERS = (
    b"ECS_CONTAINER_METADATA_URI_V4",
    b"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    b"AWS_CONTAINER_CREDENTIALS_FULL_URI",
)
FORMATS = ("shell", "dotenv", "json", "systemd")
HEADER = "metamock env export: generated, do not edit"

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_GLOB_CHARS = frozenset("*?[")


def parse_environ(raw: bytes) -> dict[bytes, bytes]:
    """Split a /proc/<pid>/environ block (NUL-separated NAME=VALUE) into a dict."""
    result: dict[bytes, bytes] = {}
    for entry in raw.split(b"\0"):
        name, sep, value = entry.partition(b"=")
        if sep and name:
            result.setdefault(name, value)  # the first wins, as getenv(3) does
    return result


def read_environ(pid: int, proc: Path = Path("/proc")) -> dict[bytes, bytes]:
    """The environment process `pid` started with; EnvironmentReadError when it cannot be read."""
    try:
        raw = (proc / str(pid) / "environ").read_bytes()
    except FileNotFoundError:
        raise EnvironmentReadError(f"no process with pid {pid}") from None
    except PermissionError:
        raise EnvironmentReadError(
            f"cannot read the environment of pid {pid}: permission denied; run metamock as the "
            "same uid as that process or grant CAP_SYS_PTRACE (linuxParameters.capabilities "
            'add ["SYS_PTRACE"])'
        ) from None
    except OSError as exc:
        if exc.errno == errno.ESRCH:
            raise EnvironmentReadError(f"process {pid} exited while being read") from None
        raise EnvironmentReadError(f"cannot read the environment of pid {pid}: {exc.strerror}") from exc
    return parse_environ(raw)


def _is_pause(pid: int, proc: Path) -> bool:
    try:
        argv0 = (proc / str(pid) / "cmdline").read_bytes().split(b"\0")[0]
    except OSError:
        return False
    return Path(os.fsdecode(argv0)).name == "pause"


def _carries_ecs(pid: int, proc: Path) -> bool:
    try:
        raw = (proc / str(pid) / "environ").read_bytes()
    except OSError:
        return False
    environ = parse_environ(raw)
    return any(marker in environ for marker in ECS_MARKERS)


def resolve_pid(pid: str, proc: Path = Path("/proc"), setting: str = "--pid") -> int:
    """`N` -> N; `auto` -> PID 1, unless PID 1 is the ECS pause process (`pidMode: task`).

    Then it is the lowest pid whose environment carries the ECS variables: in a shared task PID
    namespace that is the first process of the earliest container.
    """
    if pid != "auto":
        try:
            number = int(pid)
        except ValueError:
            raise SettingsError(setting, f"expected a number or 'auto', got {pid!r}") from None
        if number < 1:
            raise SettingsError(setting, f"expected a positive pid, got {number}")
        return number
    if not _is_pause(1, proc):
        return 1
    candidates = sorted(int(p.name) for p in proc.iterdir() if p.name.isdigit() and p.name != "1")
    for candidate in candidates:
        if _carries_ecs(candidate, proc):
            return candidate
    raise EnvironmentReadError(
        "PID 1 is the ECS pause process and no readable process carries the ECS variables; "
        "grant CAP_SYS_PTRACE or run as the same uid as the application"
    )


@dataclass(frozen=True)
class AllowList:
    """Names and globs of the variables to carry; static keys only by exact name."""

    patterns: tuple[str, ...] = DEFAULT_ALLOW

    @classmethod
    def with_extra(cls, extra: Iterable[str]) -> AllowList:
        extra = tuple(extra)
        for item in extra:
            if not item or "=" in item:
                raise SettingsError("--allow", f"expected a variable name or glob, got {item!r}")
        return cls(DEFAULT_ALLOW + extra)

    def allows(self, name: str) -> bool:
        if name in STATIC_KEYS:
            return name in self.patterns
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.patterns)


def select(environ: Mapping[bytes, bytes], allow: AllowList) -> dict[str, bytes]:
    """The allowed variables with portable names, sorted by name."""
    chosen: dict[str, bytes] = {}
    for raw_name, value in environ.items():
        try:
            name = raw_name.decode("ascii")
        except UnicodeDecodeError:
            continue
        if _NAME.match(name) and allow.allows(name):
            chosen[name] = value
    return dict(sorted(chosen.items()))


# ---- renderers: each returns the file's bytes and the names it had to leave out ----------


def _shell_quote(value: bytes) -> bytes:
    # Inside single quotes nothing is special; a quote is closed, escaped and reopened.
    return b"'" + value.replace(b"'", b"'\\''") + b"'"


def render_shell(variables: Mapping[str, bytes]) -> bytes:
    lines = [f"# {HEADER}\n".encode()]
    lines += [b"export " + n.encode() + b"=" + _shell_quote(v) + b"\n" for n, v in variables.items()]
    return b"".join(lines)


def _dotenv_quote(value: bytes) -> bytes:
    # Single quotes are literal for python-dotenv, compose and godotenv alike; values that
    # need escapes (quote, backslash, CR which text-mode readers would fold) use double quotes.
    if not any(c in value for c in (b"'", b"\\", b"\r")):
        return b"'" + value + b"'"
    escaped = (
        value.replace(b"\\", b"\\\\").replace(b'"', b'\\"').replace(b"\r", b"\\r").replace(b"\n", b"\\n")
    )
    return b'"' + escaped + b'"'


def render_dotenv(variables: Mapping[str, bytes]) -> bytes:
    lines = [f"# {HEADER}\n".encode()]
    lines += [n.encode() + b"=" + _dotenv_quote(v) + b"\n" for n, v in variables.items()]
    return b"".join(lines)


def render_json(variables: Mapping[str, bytes]) -> bytes:
    # Non-UTF-8 bytes become lone surrogates (\udcXX), as in Python's os.environ: decode the
    # strings with errors="surrogateescape" to get the exact bytes back.
    decoded = {n: v.decode("utf-8", "surrogateescape") for n, v in variables.items()}
    return (json.dumps(decoded, indent=2, ensure_ascii=True) + "\n").encode()


_SYSTEMD_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t", "%": "%%"}


def _systemd_quote(name: str, value: str) -> str:
    out = []
    for ch in f"{name}={value}":
        if ch in _SYSTEMD_ESCAPES:
            out.append(_SYSTEMD_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def render_systemd(variables: Mapping[str, bytes]) -> tuple[bytes, list[str]]:
    """A `[Service]` drop-in, one quoted `Environment=` per variable (systemd.syntax(7))."""
    lines = [f"# {HEADER}\n", "[Service]\n"]
    skipped = []
    for name, raw in variables.items():
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError:
            skipped.append(name)  # systemd ignores assignments that are not valid UTF-8
            continue
        lines.append(f"Environment={_systemd_quote(name, value)}\n")
    return "".join(lines).encode(), skipped


def render(fmt: str, variables: Mapping[str, bytes]) -> tuple[bytes, list[str]]:
    """Render in `fmt`; also returns the names that format cannot carry (left out)."""
    if fmt == "shell":
        return render_shell(variables), []
    if fmt == "dotenv":
        return render_dotenv(variables), []
    if fmt == "json":
        return render_json(variables), []
    if fmt == "systemd":
        return render_systemd(variables)
    raise SettingsError("--format", f"expected one of {', '.join(FORMATS)}, got {fmt!r}")


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write `data` to `path` via a temporary file in the same directory and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)  # before any byte lands: the file is never readable by others
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
