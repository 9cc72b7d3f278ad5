"""`metamock doctor`: find what is wrong with the metadata setup and say how to fix it."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from metamock.doctor.context import DEFAULT_PORT, DoctorContext
from metamock.doctor.report import exit_code, render_human, render_json
from metamock.doctor.runner import run_checks
from metamock.errors import SettingsError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help='print {"checks": [...]} instead of lines')
    parser.add_argument(
        "--port", type=int, default=None, help=f"the server's port (default: METAMOCK_PORT or {DEFAULT_PORT})"
    )
    parser.add_argument("--offline", action="store_true", help="skip the checks that call AWS (STS)")


def _port(flag: int | None, environ: dict[str, str]) -> int:
    if flag is not None:
        value: object = flag
        setting = "--port"
    else:
        value = environ.get("METAMOCK_PORT", DEFAULT_PORT)
        setting = "METAMOCK_PORT"
    try:
        port = int(str(value))
    except ValueError:
        raise SettingsError(setting, f"not a port number: {value!r}") from None
    if not 1 <= port <= 65535:
        raise SettingsError(setting, f"not a port number: {port}")
    return port


def run(args: argparse.Namespace) -> int:
    environ = dict(os.environ)
    ctx = DoctorContext(environ=environ, port=_port(args.port, environ), offline=args.offline)
    checks = asyncio.run(run_checks(ctx))
    if args.json:
        sys.stdout.write(render_json(checks))
    else:
        colour = sys.stdout.isatty() and "NO_COLOR" not in environ
        sys.stdout.write(render_human(checks, colour=colour))
    sys.stdout.flush()
    return exit_code(checks)
