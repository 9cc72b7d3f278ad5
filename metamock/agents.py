"""What the sidecar runs: agent presets (`--agent`) and arbitrary commands (`--run NAME=COMMAND`).

Preset facts come from the agents' own container images: the SSM agent's
(aws/amazon-ssm-agent packaging/docker/start-agent.sh ends in `exec /usr/bin/amazon-ssm-agent`)
and the CloudWatch agent's (its Dockerfiles set `RUN_IN_CONTAINER="True"` and enter through
`/opt/aws/amazon-cloudwatch-agent/bin/start-amazon-cloudwatch-agent`).
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from metamock.errors import SettingsError

log = logging.getLogger("metamock.agents")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")


@dataclass(frozen=True)
class Program:
    """One supervised program: argv (never through a shell), extra env, and start-up chores."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    unit: str | None = None  # systemd unit whose drop-in gets the exported variables
    stale_paths: tuple[Path, ...] = ()  # removed before every start
    option: str = "--run"  # how it was asked for, as an error names it
    missing_hint: str = ""  # what a missing program means, for the error

    def before_start(self) -> None:
        for path in self.stale_paths:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
                log.info("%s: removed stale %s", self.name, path)
            elif path.exists() or path.is_symlink():
                path.unlink(missing_ok=True)
                log.info("%s: removed stale %s", self.name, path)


PRESETS: dict[str, Program] = {
    "ssm": Program(
        name="ssm",
        argv=("/usr/bin/amazon-ssm-agent",),
        unit="amazon-ssm-agent",
        # A socket left by an earlier agent in this filesystem makes the new one fail with
        # "address already in use" on ipc:///var/lib/amazon/ssm/ipc/health.
        stale_paths=(Path("/var/lib/amazon/ssm/ipc"),),
        option="--agent",
        missing_hint="the SSM agent is not installed in this image",
    ),
    "cloudwatch": Program(
        name="cloudwatch",
        argv=("/opt/aws/amazon-cloudwatch-agent/bin/start-amazon-cloudwatch-agent",),
        env={"RUN_IN_CONTAINER": "True"},  # exactly this spelling; the agent compares strings
        unit="amazon-cloudwatch-agent",
        option="--agent",
        missing_hint="the CloudWatch agent is not installed in this image",
    ),
}


def preset(name: str) -> Program:
    try:
        return PRESETS[name]
    except KeyError:
        raise SettingsError("--agent", f"expected one of {', '.join(PRESETS)}, got {name!r}") from None


def parse_run(value: str) -> Program:
    """`NAME=COMMAND`: COMMAND split by `shlex.split` (see RUN_SYNTAX), never run through a shell."""
    name, sep, command = value.partition("=")
    if not sep or not _NAME.match(name):
        raise SettingsError("--run", f"expected NAME=COMMAND with NAME like [A-Za-z0-9_.-]+, got {value!r}")
    try:
        argv = tuple(shlex.split(command))
    except ValueError as exc:
        raise SettingsError("--run", f"{name}: cannot split the command: {exc}") from None
    if not argv:
        raise SettingsError("--run", f"{name}: empty command")
    return Program(name=name, argv=argv)


# What `--run` does with COMMAND, exactly (shlex.split in POSIX mode, comments off); for the help.
RUN_SYNTAX = (
    "COMMAND is split into words by Python's shlex.split (POSIX rules) and run directly, never "
    "through a shell: words split at spaces, tabs and newlines; '...' is literal; in \"...\" a "
    'backslash escapes only " and \\ ("\\$" stays \\$, unlike a shell); outside quotes a '
    "backslash makes the next character literal; no $VAR, ~, glob, $(...) or `...` expansion, and "
    "; | & > # are ordinary characters"
)


def check_installed(programs: Sequence[Program], environ: Mapping[str, str]) -> None:
    """SettingsError naming the first program whose executable is missing (checked at start).

    Found on the PATH each program will get, as the supervisor looks it up: a missing agent is a
    broken image or a typo, which restarting (exit 127, with backoff) would never fix.
    """
    for program in programs:
        command = program.argv[0]
        search = program.env.get("PATH", environ.get("PATH", os.defpath))
        if shutil.which(command, path=search) is not None:
            continue
        if "/" in command:
            why = "is not executable" if Path(command).exists() else "does not exist"
        else:
            why = f"is not found on PATH ({search})"
        hint = f" ({program.missing_hint})" if program.missing_hint else ""
        raise SettingsError(program.option, f"{command} {why}{hint}", value=program.name)


def check_unique(programs: tuple[Program, ...]) -> None:
    seen: set[str] = set()
    for program in programs:
        if program.name in seen:
            raise SettingsError("--agent/--run", f"{program.name!r} is named twice")
        seen.add(program.name)
