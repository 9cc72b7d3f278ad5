"""`metamock serve`: the IMDS server."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Mapping

from metamock.lifecycle import serve_until_signal
from metamock.service import Service
from metamock.settings import Settings

log = logging.getLogger("metamock")


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The serve options, shared with `metamock sidecar`. Defaults are None: see Settings.load."""
    add = parser.add_argument
    add("--host", action="append", help="listen address (repeatable; default 127.0.0.1 and ::1)")
    add("--port", help="listen port (default 1338)")
    add("--source", help="auto | ecs | local (default auto)")
    add("--tokens", help="optional | required (required = IMDSv1 off)")
    add(
        "--hop-limit",
        dest="hop_limit",
        help="IP TTL / hop limit of token responses, 1..64 (default 1)",
    )
    add(
        "--config",
        help="TOML file: metadata overrides, user-data, tags, scenarios, server settings",
    )
    add(
        "--task-metadata",
        dest="task_metadata",
        help="local source: a TMDE v4 /task JSON to translate",
    )
    add("--profile", help="local source: credentials from this AWS profile")
    add("--role-arn", dest="role_arn", help="local source: credentials by AssumeRole of this role")
    add(
        "--netfilter",
        action="store_const",
        const=True,
        help="apply the redirect at start, remove at exit",
    )
    add(
        "--watch-config",
        dest="watch_config",
        action="store_const",
        const=True,
        help="reload the config file when it changes (SIGHUP always reloads)",
    )
    add(
        "--stop-notice",
        dest="stop_notice",
        help="seconds to serve the stop notice after SIGTERM (default 10)",
    )
    add(
        "--allow-remote",
        dest="allow_remote",
        action="store_const",
        const=True,
        help="allow non-loopback listen addresses (hands the task role to the network!)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_serve_arguments(parser)


def settings_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    flags = {
        name: getattr(args, name, None)
        for name in (
            "host", "port", "source", "tokens", "hop_limit", "config", "task_metadata", "profile",
            "role_arn", "netfilter", "watch_config", "stop_notice", "allow_remote", "scenario",
        )
    }  # fmt: skip
    return Settings.load(flags, environ)


def endpoint_advice(port: int) -> str:
    return f"AWS_EC2_METADATA_SERVICE_ENDPOINT=http://127.0.0.1:{port}/"


def announce(service: Service) -> None:
    settings = service.settings
    hosts = ", ".join(f"[{h}]" if ":" in h else h for h in settings.hosts)
    log.info(
        "serving IMDS on %s port %d (source %s, tokens %s); point clients at it with %s",
        hosts, service.port, settings.resolved_source(), settings.tokens, endpoint_advice(service.port),
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args, os.environ)
    _install_fast_loop()
    return asyncio.run(serve_until_signal(settings, on_ready=announce))


def _install_fast_loop() -> None:
    """Use uvloop when it is installed (the `fast` extra); plain asyncio otherwise."""
    try:
        import uvloop
    except ImportError:
        return
    if sys.version_info >= (3, 12):  # pragma: no cover
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
