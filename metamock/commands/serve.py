"""`metamock serve`: the IMDS server."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Mapping

from metamock import settings as settings_table
from metamock.endpoint import bracket, client_host, endpoint_advice
from metamock.lifecycle import run_service
from metamock.service import Service
from metamock.settings import Settings

log = logging.getLogger("metamock")


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The serve options, shared with `metamock sidecar`: derived from the table in
    metamock.settings. Defaults are None (not given): see Settings.load."""
    settings_table.add_arguments(parser)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_serve_arguments(parser)


def settings_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    flags = {name: getattr(args, name, None) for name in settings_table.flag_names()}
    return Settings.load(flags, environ)


def announce(service: Service) -> None:
    settings = service.settings
    hosts = ", ".join(bracket(h) for h in settings.hosts)
    # Advise an address the server really listens on (with only --host ::1, 127.0.0.1 is refused).
    advice = endpoint_advice(service.port, client_host(settings.hosts))
    log.info(
        "serving IMDS on %s port %d (source %s, tokens %s); point clients at it with %s",
        hosts, service.port, settings.resolved_source(), settings.tokens, advice,
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args, os.environ)
    _install_fast_loop()
    return asyncio.run(run_service(settings, on_ready=announce))


def _install_fast_loop() -> None:
    """Use uvloop when it is installed (the `fast` extra); plain asyncio otherwise."""
    try:
        import uvloop
    except ImportError:
        return
    if sys.version_info >= (3, 12):  # pragma: no cover
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
