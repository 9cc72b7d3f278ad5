"""`metamock env export|exec`: carry the ECS variables of another process (default PID 1)."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from pathlib import Path

from metamock import envexport
from metamock.errors import SettingsError

log = logging.getLogger("metamock.env")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pid",
        default="1",
        help="process to read: a pid, or 'auto' (PID 1 unless it is the ECS pause process)",
    )
    parser.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="NAME_OR_GLOB",
        help="also carry these variables (static AWS keys only when named exactly)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="export|exec")
    export = actions.add_parser("export", help="write the variables in a format")
    _common(export)
    export.add_argument("--format", choices=envexport.FORMATS, default="shell")
    export.add_argument("--output", type=Path, help="write here (atomically, mode 0600)")
    run = actions.add_parser("exec", help="exec a command with the variables added")
    _common(run)
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")


def exported(args: argparse.Namespace) -> tuple[int, envexport.AllowList, dict[str, bytes]]:
    """The pid read, the allow-list applied, and the variables it let through."""
    allow = envexport.AllowList.with_extra(args.allow)
    pid = envexport.resolve_pid(args.pid)
    return pid, allow, envexport.select(envexport.read_environ(pid), allow)


def run(args: argparse.Namespace) -> int:
    if args.action == "exec":
        return _exec(args)
    pid, allow, variables = exported(args)
    if not variables:
        # Still exit 0 with the (header-only) output: an entrypoint that sources it works the
        # same off ECS (local docker run). But say so: a bare header looks like success.
        print(
            f"metamock env export: nothing to export from pid {pid}: it has none of "
            f"{', '.join(allow.patterns)} (not an ECS task, or its environment was reset?)",
            file=sys.stderr,
        )
    data, skipped = envexport.render(args.format, variables)
    for name in skipped:
        log.warning("%s left out: its value is not valid UTF-8, which %s cannot carry", name, args.format)
    if args.output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        envexport.write_atomic(args.output, data)
    return 0


def _exec(args: argparse.Namespace) -> int:
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise SettingsError("CMD", "expected a command after --")
    _, _, variables = exported(args)
    environ = dict(os.environb)  # the edge: this command's own environment, plus the export
    environ.update({name.encode(): value for name, value in variables.items()})
    path = shutil.which(argv[0], path=environ.get(b"PATH", b"").decode(errors="replace") or None)
    if path is None:
        raise SettingsError("CMD", f"command not found: {argv[0]}")
    os.execve(path, argv, environ)  # noqa: S606 - exec is this command's purpose
