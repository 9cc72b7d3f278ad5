"""The `metamock` command line: picks a subcommand, configures logging, maps errors to exit codes."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Protocol, cast

from metamock import __version__
from metamock.errors import MetamockError
from metamock.logs import configure as configure_logging
from metamock.settings import add_log_arguments, log_options

# name -> (module, one-line help). Modules are imported only when their command runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("metamock.commands.serve", "serve IMDS v1/v2 translated from ECS metadata"),
    "healthcheck": ("metamock.commands.healthcheck", "exit 0 when the local server answers"),
    "netfilter": ("metamock.commands.netfilter", "redirect 169.254.169.254 to the server"),
    "env": ("metamock.commands.env", "re-export the ECS variables of another process"),
    "sidecar": ("metamock.commands.sidecar", "container entrypoint: serve and supervise agents"),
    "doctor": ("metamock.commands.doctor", "diagnose the metadata setup"),
    "trigger": ("metamock.commands.trigger", "trigger or clear EC2 life-cycle scenarios"),
    "status": ("metamock.commands.status", "what the running server does: credentials, redirect, requests"),
    "run": (
        "metamock.commands.run",
        "run a command that sees EC2, in namespaces of its own (no root needed)",
    ),
}


class CommandModule(Protocol):
    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


def _top_parser() -> argparse.ArgumentParser:
    epilog = "commands:\n" + "\n".join(f"  {n:<12} {h}" for n, (_, h) in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="metamock",
        description="An EC2 instance metadata service for ECS tasks, Fargate and laptops.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"metamock {__version__}")
    parser.add_argument("command", choices=sorted(COMMANDS), metavar="COMMAND")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run metamock with `argv` (default: sys.argv[1:]) and return the exit code."""
    try:
        code = _main(argv)
        sys.stdout.flush()  # here, not at exit: a closed pipe is then caught below
    except BrokenPipeError:
        # `metamock netfilter status | head -1`: the reader left. The Python docs' recipe: point
        # stdout at /dev/null so the flush at exit does not raise again, and exit 1 quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return code


def _main(argv: Sequence[str] | None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or args_list[0] not in COMMANDS:
        parser = _top_parser()
        try:
            parser.parse_args(args_list)
        except SystemExit as exc:
            return int(exc.code or 0)
        return 2
    name, rest = args_list[0], args_list[1:]
    module = cast(CommandModule, importlib.import_module(COMMANDS[name][0]))
    parser = argparse.ArgumentParser(prog=f"metamock {name}", description=COMMANDS[name][1])
    add_log_arguments(parser)
    module.add_arguments(parser)
    try:
        args = parser.parse_args(rest)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        options = log_options(vars(args), os.environ, getattr(module, "DEFAULT_LOG_LEVEL", "info"))
    except MetamockError as exc:
        print(f"metamock {name}: {exc}", file=sys.stderr)
        return exc.exit_code
    configure_logging(options)
    try:
        return module.run(args)
    except MetamockError as exc:
        print(f"metamock {name}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
