"""The README's two set-up commands, run as written, the way a new user runs them.

The main job's command is run from a copy of the tracked files with the machine's own `python3`
first on PATH (on Debian that Python refuses a global `pip install`, PEP 668): the install steps
reach PyPI as a user's would, and the final `metamock serve` runs inside a network namespace with
only `lo`, where a client then asks it for the instance id exactly as the README's next lines do.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import make_netns, require
from tests.netns import REPO, base_env
from tests.servers import wait_ready

SETUP = re.compile(r"## Set up on a fresh clone\n(?P<body>.*?)\n## ", re.S)
FENCE = re.compile(r"```sh\n(?P<code>.*?)```", re.S)


def setup_commands() -> list[str]:
    """The fenced commands of the set-up section, before its "Then, in another shell" example."""
    section = SETUP.search((REPO / "README.md").read_text(encoding="utf-8"))
    assert section is not None, "README has no 'Set up on a fresh clone' section"
    setup, _, _ = section["body"].partition("Then, in another shell")
    return [m["code"].strip() for m in FENCE.finditer(setup)]


def test_readme_has_exactly_two_setup_commands() -> None:
    commands = setup_commands()
    assert len(commands) == 2, commands
    assert all("\n" not in c for c in commands), "each set-up command is one line"
    assert commands[1] == "bash tests/run.sh"
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert "bash tests/run.sh" in ci, ".ci/run must call the README's test command"


def _tracked_copy(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.split(
        b"\0"
    )
    for name in filter(None, files):
        src = REPO / name.decode()
        if src.is_symlink() or src.is_file():
            target = dest / name.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target, follow_symlinks=False)


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_main_job_command_as_written(tmp_path: Path) -> None:
    system_python = Path("/usr/bin/python3")
    require(system_python.exists(), "needs the distribution's own /usr/bin/python3")
    require(
        subprocess.run([str(system_python), "-c", "import venv, ensurepip"], check=False).returncode == 0,
        "needs python3-venv",
    )
    main_job = setup_commands()[0]
    steps = [shlex.split(step) for step in main_job.split("&&")]
    *install, serve = steps
    assert serve[:2] == [".venv/bin/metamock", "serve"], main_job
    clone = tmp_path / "clone"
    _tracked_copy(clone)
    home = tmp_path / "home"
    home.mkdir()
    # Only the distribution's Python on PATH: what a fresh Debian machine has.
    env = base_env(PATH="/usr/bin:/bin", HOME=str(home))
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    for argv in install:
        done = subprocess.run(
            argv, cwd=clone, env=env, capture_output=True, text=True, timeout=480, check=False
        )
        assert done.returncode == 0, (
            f"{shlex.join(argv)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        )
    # A plain (non-editable) install carries the netfilter rule files, which the source tree keeps
    # in iptables/ behind a symlink: a wheel without them would fail at `--netfilter`.
    rules = list((clone / ".venv").glob("lib/python3*/site-packages/metamock/netfilter/rules/*.nft"))
    assert rules, "the installed package has no netfilter rule files"
    ns = make_netns()
    try:
        proc = ns.popen(serve, cwd=clone, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            wait_ready(1338, proc, ns)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the server said:\n{_output(proc)}") from None
        # Then what the README tells the user to type next.
        put = ns.run(
            ["curl", "-s", "-f", "-X", "PUT", "-H", "X-aws-ec2-metadata-token-ttl-seconds: 300",
             "http://127.0.0.1:1338/latest/api/token"]
        )  # fmt: skip
        assert put.returncode == 0 and put.stdout, put.stderr
        token = put.stdout
        got = ns.run(
            ["curl", "-s", "-f", "-H", f"X-aws-ec2-metadata-token: {token}",
             "http://127.0.0.1:1338/latest/meta-data/instance-id"]
        )  # fmt: skip
        assert got.returncode == 0
        assert got.stdout.startswith("i-"), got.stdout
        proc.terminate()
        assert proc.wait(timeout=30) == 0
    finally:
        ns.close()


def _output(proc: subprocess.Popen[bytes]) -> str:
    if proc.poll() is None:
        proc.kill()
    assert proc.stdout is not None
    return proc.stdout.read().decode(errors="replace")[-3000:]
