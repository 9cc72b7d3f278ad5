"""`metamock env export|exec`: every format round-trips byte-exactly through its real consumer."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from metamock import envexport
from metamock.errors import EnvironmentReadError, SettingsError
from tests.conftest import REPO, require, require_root
from tests.envexport_support import wait_exec

GOLDEN = REPO / "tests" / "golden" / "env"
PY = sys.executable


def crafted(canary: Path) -> dict[str, bytes]:
    """Values built to break naive quoting: each would run `touch canary` if evaluated."""
    c = str(canary).encode()
    return {
        "ECS_CONTAINER_METADATA_URI_V4": b"http://169.254.170.2/v4/abc$(touch " + c + b")",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": b"/v2/credentials/`touch " + c + b"`",
        "AWS_REGION": b"us-west-2",
        "MMTEST_QUOTES": b"it's \"double\" and 'single' '\\'' \"\\\"\"",
        "MMTEST_NEWLINES": b"line1\nline2\n\nexport X=1; touch " + c + b"\n",
        "MMTEST_BACKSLASH": b"a\\b\\\\c\\n\\t\\x41\\",
        "MMTEST_NON_UTF8": b"\xff\xfe\x80 latin1: caf\xe9",
        "MMTEST_CONTROL": b"cr\rtab\tbell\x07esc\x1b[0m del\x7f",
        "MMTEST_EXPAND": b"${HOME} $HOME ${X:-$(touch " + c + b")} %h %% %n $$ !!",
        "MMTEST_UNICODE": "caf\u00e9 \u2603 \U0001f600".encode(),
        "MMTEST_EMPTY": b"",
        "MMTEST_EQUALS": b"a=b=c==",
        "MMTEST_SPACES": b"  leading and trailing  ",
        "MMTEST_HASH": b"#not a comment # still",
    }


STATIC = {"AWS_ACCESS_KEY_ID": b"AKIAEXAMPLESTATIC", "AWS_SECRET_ACCESS_KEY": b"static/secret"}


@pytest.fixture
def canary(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "canary"
    yield path
    assert not path.exists(), "a value was executed"


@pytest.fixture
def target(canary: Path) -> Iterator[tuple[int, dict[str, bytes]]]:
    """A process started with the crafted environment (plus static keys and noise)."""
    env = {**crafted(canary), **STATIC, "PATH": b"/usr/bin:/bin", "UNRELATED": b"x"}
    proc = subprocess.Popen(["sleep", "60"], env={k.encode(): v for k, v in env.items()})
    try:
        wait_exec(proc.pid)
        yield proc.pid, crafted(canary)
    finally:
        proc.kill()
        proc.wait(timeout=10)


def env_cli(*args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """`metamock env ARGS...` as a user types it (behind `prefix`, e.g. setpriv)."""
    argv = [*prefix, PY, "-m", "metamock", "env", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False, cwd=REPO)


def export(pid: int, fmt: str, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return env_cli(
        "export", "--pid", str(pid), "--format", fmt, "--output", str(out), "--allow", "MMTEST_*", *extra
    )


def env0(raw: bytes) -> dict[bytes, bytes]:
    return envexport.parse_environ(raw)


@pytest.mark.parametrize("shell", ["bash", "sh"])
def test_shell_round_trips_through_source(
    target: tuple[int, dict[str, bytes]], tmp_path: Path, shell: str
) -> None:
    pid, expected = target
    out = tmp_path / "ecs.sh"
    assert export(pid, "shell", out).returncode == 0
    dumped = subprocess.run(
        ["env", "-i", shell, "-c", '. "$1" && exec env -0', shell, str(out)],
        capture_output=True,
        timeout=30,
        check=True,
    ).stdout
    got = env0(dumped)
    for name, value in expected.items():
        assert got[name.encode()] == value, name
    assert b"AWS_ACCESS_KEY_ID" not in got
    assert b"UNRELATED" not in got


def test_dotenv_round_trips_through_python_dotenv(
    target: tuple[int, dict[str, bytes]], tmp_path: Path
) -> None:
    dotenv = pytest.importorskip("dotenv")
    pid, expected = target
    out = tmp_path / "ecs.env"
    assert export(pid, "dotenv", out).returncode == 0
    # Non-UTF-8 bytes are written raw: read them back the way Python reads an environment.
    stream = io.TextIOWrapper(io.BytesIO(out.read_bytes()), encoding="utf-8", errors="surrogateescape")
    got = dotenv.dotenv_values(stream=stream, interpolate=False)
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name] is not None
        assert got[name].encode("utf-8", "surrogateescape") == value, name


def test_json_round_trips_through_json_loads(target: tuple[int, dict[str, bytes]], tmp_path: Path) -> None:
    pid, expected = target
    out = tmp_path / "ecs.json"
    assert export(pid, "json", out).returncode == 0
    got = json.loads(out.read_bytes())
    assert {k: v.encode("utf-8", "surrogateescape") for k, v in got.items()} == expected


# ---- systemd: a parser written to systemd.syntax(7) and systemd.exec(5) ---------------------

_C_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
_C_ESCAPES |= {"\\": "\\", '"': '"', "'": "'", "s": " "}


def _unescape(word: str) -> str:
    out, i = [], 0
    while i < len(word):
        ch = word[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = word[i + 1]
        if nxt in _C_ESCAPES:
            out.append(_C_ESCAPES[nxt])
            i += 2
        elif nxt == "x":
            out.append(chr(int(word[i + 2 : i + 4], 16)))
            i += 4
        elif nxt in "uU":
            width = 4 if nxt == "u" else 8
            out.append(chr(int(word[i + 2 : i + 2 + width], 16)))
            i += 2 + width
        elif nxt in "01234567":
            out.append(chr(int(word[i + 1 : i + 4], 8)))
            i += 4
        else:
            raise AssertionError(f"unknown escape \\{nxt}")
    return "".join(out)


def _words(rvalue: str) -> list[str]:
    """Whitespace-separated words; "..." and '...' group, backslash escapes (unquote+cunescape)."""
    words: list[str] = []
    for match in re.finditer(r'"((?:\\.|[^"\\])*)"|\'((?:\\.|[^\'\\])*)\'|((?:\\.|[^\s"\'\\])+)', rvalue):
        body = next(g for g in match.groups() if g is not None)
        words.append(_unescape(body))
    return words


def _specifiers(word: str) -> str:
    # Only %% may appear in what metamock writes; any other specifier would be expanded.
    assert re.search(r"%[^%]", word.replace("%%", "")) is None, word
    return word.replace("%%", "%")


def parse_systemd(text: str) -> dict[str, str]:
    env: dict[str, str] = {}
    section = None
    for line in text.splitlines():
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        key, _, rvalue = line.partition("=")
        assert section == "[Service]", line
        assert key == "Environment", line
        for word in _words(rvalue):
            name, sep, value = _specifiers(word).partition("=")
            assert sep, word
            env[name] = value
    return env


def test_systemd_round_trips_by_the_spec(target: tuple[int, dict[str, bytes]], tmp_path: Path) -> None:
    pid, expected = target
    units = tmp_path / "units"
    (units / "mm.service.d").mkdir(parents=True)
    (units / "mm.service").write_text("[Unit]\nDescription=t\n[Service]\nExecStart=/bin/true\n")
    out = units / "mm.service.d" / "metamock-ecs.conf"
    result = export(pid, "systemd", out)
    assert result.returncode == 0
    # systemd drops assignments that are not UTF-8; metamock leaves them out and says so.
    assert "MMTEST_NON_UTF8" in result.stderr
    got = parse_systemd(out.read_text())
    want = {k: v.decode() for k, v in expected.items() if k != "MMTEST_NON_UTF8"}
    assert got == want
    # systemd itself, where installed (the spec parser above is the test everywhere else).
    analyze = shutil.which("systemd-analyze")
    if analyze is not None:
        verify = subprocess.run(
            [analyze, "verify", str(units / "mm.service")],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "SYSTEMD_UNIT_PATH": f"{units}:"},
        )
        assert "metamock-ecs.conf" not in verify.stderr, verify.stderr


# ---- policy, file handling, errors ----------------------------------------------------------


def test_static_keys_only_by_exact_name(target: tuple[int, dict[str, bytes]], tmp_path: Path) -> None:
    pid, _ = target
    out = tmp_path / "e.json"
    assert export(pid, "json", out, "--allow", "AWS_*", "--allow", "AWS_ACCESS_KEY_*").returncode == 0
    got = json.loads(out.read_bytes())
    assert "AWS_ACCESS_KEY_ID" not in got
    assert "AWS_SECRET_ACCESS_KEY" not in got
    assert export(pid, "json", out, "--allow", "AWS_ACCESS_KEY_ID").returncode == 0
    got = json.loads(out.read_bytes())
    assert got["AWS_ACCESS_KEY_ID"] == "AKIAEXAMPLESTATIC"
    assert "AWS_SECRET_ACCESS_KEY" not in got


def test_default_allow_list_carries_only_ecs_variables() -> None:
    environ = {
        b"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": b"/v2/credentials/x",
        b"AWS_CONTAINER_CREDENTIALS_FULL_URI": b"http://169.254.170.23/v1/credentials",
        b"AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": b"/var/run/token",
        b"ECS_CONTAINER_METADATA_URI": b"u3",
        b"ECS_CONTAINER_METADATA_URI_V4": b"u4",
        b"ECS_AGENT_URI": b"a",
        b"AWS_EXECUTION_ENV": b"AWS_ECS_FARGATE",
        b"AWS_REGION": b"r",
        b"AWS_DEFAULT_REGION": b"r",
        b"AWS_ACCESS_KEY_ID": b"AKIA",
        b"AWS_SECRET_ACCESS_KEY": b"s",
        b"AWS_SESSION_TOKEN": b"t",
        b"AWS_PROFILE": b"p",
        b"HOME": b"/root",
        b"BAD-NAME": b"x",
    }
    got = envexport.select(environ, envexport.AllowList())
    assert list(got) == sorted(k.decode() for k in list(environ)[:9])


def test_output_is_0600_and_replaced_atomically(tmp_path: Path) -> None:
    out = tmp_path / "ecs.sh"
    out.write_text("old")
    out.chmod(0o644)
    inode = out.stat().st_ino
    envexport.write_atomic(out, b"new")
    assert out.read_bytes() == b"new"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert out.stat().st_ino != inode  # a rename, not a rewrite in place
    assert [p.name for p in tmp_path.iterdir()] == ["ecs.sh"]


def test_failed_write_leaves_the_old_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "ecs.sh"
    out.write_bytes(b"old")

    def fail(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="No space"):
        envexport.write_atomic(out, b"new")
    assert out.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["ecs.sh"]


def test_cli_output_file_mode(target: tuple[int, dict[str, bytes]], tmp_path: Path) -> None:
    pid, _ = target
    for fmt in envexport.FORMATS:
        out = tmp_path / f"new-dir-{fmt}" / "file"
        assert export(pid, fmt, out).returncode == 0
        assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_exec_adds_the_variables(target: tuple[int, dict[str, bytes]], tmp_path: Path) -> None:
    pid, expected = target
    argv = [PY, "-m", "metamock", "env", "exec", "--pid", str(pid), "--allow", "MMTEST_*"]
    argv += ["--", "env", "-0"]
    result = subprocess.run(
        argv, capture_output=True, timeout=30, check=True, cwd=REPO, env={**os.environ, "KEEP": "1"}
    )
    got = env0(result.stdout)
    for name, value in expected.items():
        assert got[name.encode()] == value
    assert got[b"KEEP"] == b"1"
    assert b"AWS_SECRET_ACCESS_KEY" not in got


def test_golden_renderings() -> None:
    variables = {
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": b"/v2/credentials/6e2b7c2a",
        "AWS_REGION": b"us-west-2",
        "MMTEST_HARD": b'it\'s $(x) `y` "z" \\ %h\nnext\r\tend',
        "MMTEST_RAW": b"\xffok",
    }
    for fmt in envexport.FORMATS:
        data, _ = envexport.render(fmt, variables)
        golden = GOLDEN / f"export.{fmt}"
        if os.environ.get("UPDATE_GOLDEN"):  # not METAMOCK_*: conftest scrubs those
            golden.write_bytes(data)
        assert data == golden.read_bytes(), fmt


def _fake_proc(root: Path, procs: dict[int, tuple[bytes, bytes]]) -> Path:
    for pid, (cmdline, environ) in procs.items():
        (root / str(pid)).mkdir(parents=True)
        (root / str(pid) / "cmdline").write_bytes(cmdline)
        (root / str(pid) / "environ").write_bytes(environ)
    (root / "self").mkdir()
    return root


def test_pid_auto(tmp_path: Path) -> None:
    ecs = b"PATH=/bin\0ECS_CONTAINER_METADATA_URI_V4=http://x\0"
    plain = _fake_proc(tmp_path / "a", {1: (b"/usr/bin/metamock\0sidecar\0", ecs)})
    assert envexport.resolve_pid("auto", plain) == 1
    task = _fake_proc(
        tmp_path / "b",
        {1: (b"/pause\0", b""), 9: (b"sh\0", b"PATH=/bin\0"), 12: (b"app\0", ecs), 40: (b"x\0", ecs)},
    )
    assert envexport.resolve_pid("auto", task) == 12
    empty = _fake_proc(tmp_path / "c", {1: (b"/pause\0", b""), 9: (b"sh\0", b"PATH=/bin\0")})
    with pytest.raises(EnvironmentReadError, match="SYS_PTRACE"):
        envexport.resolve_pid("auto", empty)
    assert envexport.resolve_pid("17", task) == 17
    with pytest.raises(SettingsError, match="--pid"):
        envexport.resolve_pid("one", task)


def test_missing_process_is_exit_2(tmp_path: Path) -> None:
    result = env_cli("export", "--pid", "999999999")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1


@pytest.mark.root
def test_unreadable_environ_names_sys_ptrace() -> None:
    require_root()
    require(shutil.which("setpriv") is not None, "needs setpriv (util-linux)")
    drop = ["setpriv", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"]
    other = subprocess.Popen([*drop, "--reuid=65534", "--regid=65534", "sleep", "60"])
    try:
        result = env_cli("export", "--pid", str(other.pid), prefix=(*drop, "--reuid=65533", "--regid=65533"))
    finally:
        other.kill()
        other.wait(timeout=10)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert "SYS_PTRACE" in lines[0]
    assert "same uid" in lines[0]


def test_nothing_to_export_is_said_on_stderr() -> None:
    """A process without ECS variables: the header alone on stdout (exit 0), and one line why."""
    proc = subprocess.Popen(["sleep", "60"], env={"PATH": "/usr/bin:/bin", "HOME": "/root"})
    try:
        wait_exec(proc.pid)
        result = env_cli("export", "--pid", str(proc.pid))
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert result.returncode == 0
    assert result.stdout == f"# {envexport.HEADER}\n"
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"metamock env export: nothing to export from pid {proc.pid}: ")
    assert "AWS_CONTAINER_CREDENTIALS_*, " in result.stderr
    assert "ECS_CONTAINER_METADATA_URI*" in result.stderr


def test_something_to_export_says_nothing_on_stderr(
    target: tuple[int, dict[str, bytes]], tmp_path: Path
) -> None:
    pid, _ = target
    result = export(pid, "shell", tmp_path / "out.sh")
    assert result.returncode == 0
    assert result.stderr == ""
