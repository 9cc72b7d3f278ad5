"""`metamock run [serve options] [--egress] -- CMD [ARGS...]`: CMD sees EC2, without root."""

from __future__ import annotations

import argparse
import os

from metamock.commands.serve import add_serve_arguments, settings_from_args
from metamock.errors import SettingsError

# The server's lines would mix with the command's output: only warnings and errors by default.
DEFAULT_LOG_LEVEL = "warning"
USAGE = "metamock run [serve options] [--egress] -- CMD [ARGS...]"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.usage = USAGE
    add_serve_arguments(parser)
    add = parser.add_argument
    add(
        "--egress",
        action="store_true",
        help="give CMD outbound network through pasta or slirp4netns (default: none but the metadata)",
    )
    add(
        "--grace",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="after CMD exits, for what it left running to stop after SIGTERM, then SIGKILL (default 5)",
    )
    add("command", nargs=argparse.REMAINDER, metavar="CMD [ARGS...]", help="the command to run")


def run(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise SettingsError("CMD", f"no command given ({USAGE})")
    if not 0 <= args.grace <= 3600:
        raise SettingsError("--grace", f"expected 0..3600 seconds, got {args.grace}")
    settings = settings_from_args(args, os.environ)  # a bad option: one line, exit 2, nothing made
    from metamock.sandbox import run_command

    return run_command(settings, command, egress=args.egress, grace=args.grace)
