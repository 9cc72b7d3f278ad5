"""`metamock doctor`: find what is wrong with the metadata setup and say how to fix it."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from metamock.doctor.context import DoctorContext
from metamock.doctor.report import exit_code, render_human, render_json
from metamock.doctor.runner import run_checks
from metamock.runtime import install_process_effects
from metamock.settings import add_port_argument, client_port


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help='print {"checks": [...]} instead of lines')
    add_port_argument(parser)
    parser.add_argument("--offline", action="store_true", help="skip the checks that call AWS (STS)")


def run(args: argparse.Namespace) -> int:
    environ = dict(os.environ)
    ctx = DoctorContext(environ=environ, port=client_port(args.port, environ), offline=args.offline)
    install_process_effects()  # botocore's DEBUG lines carry the session token: never at -v
    checks = asyncio.run(run_checks(ctx))
    if args.json:
        sys.stdout.write(render_json(checks))
    else:
        colour = sys.stdout.isatty() and "NO_COLOR" not in environ
        sys.stdout.write(render_human(checks, colour=colour))
    sys.stdout.flush()
    return exit_code(checks)
