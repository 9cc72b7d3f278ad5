"""`metamock sidecar`: the container entrypoint (serve + netfilter + env export + agents)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from metamock import agents, envexport
from metamock.commands.serve import add_serve_arguments, settings_from_args
from metamock.errors import SettingsError
from metamock.sidecar import PROFILE_SCRIPT, SYSTEMD_DIR, SidecarOptions, may_write_in, run_sidecar
from metamock.supervisor import Restart


class _Programs(argparse.Action):
    """--agent and --run share one list, so programs start in command-line order."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        programs = list(getattr(namespace, "programs", None) or [])
        programs.append((self.const, values))
        namespace.programs = programs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_serve_arguments(parser)
    parser.set_defaults(programs=[])
    add = parser.add_argument
    add(
        "--agent", action=_Programs, const="agent", choices=sorted(agents.PRESETS), help="run an agent preset"
    )
    add(
        "--run",
        action=_Programs,
        const="run",
        metavar="NAME=COMMAND",
        help=f"run a command (repeatable). {agents.RUN_SYNTAX}",
    )
    add(
        "--restart",
        choices=[r.value for r in Restart],
        default=Restart.ON_FAILURE.value,
        help="restart policy of every program (default on-failure; backoff 1s doubling to 30s)",
    )
    add(
        "--grace",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="for all programs to stop after SIGTERM, then SIGKILL (default 10)",
    )
    add(
        "--allow",
        action="append",
        default=[],
        metavar="NAME_OR_GLOB",
        help="also re-export these variables (static AWS keys only when named exactly)",
    )
    add(
        "--env-pid",
        dest="env_pid",
        metavar="N|auto",
        help="re-export from this process instead of the sidecar's own environment",
    )
    add(
        "--profile-script",
        dest="profile_script",
        metavar="PATH",
        help=(
            f"shell export of the variables for login shells (default {PROFILE_SCRIPT} when this "
            "user may write there; '' = none); removed at exit"
        ),
    )
    add(
        "--systemd-dir",
        dest="systemd_dir",
        metavar="DIR",
        help=(
            f"<unit>.service.d/ drop-ins for the preset agents (default {SYSTEMD_DIR} when this "
            "user may write there; '' = none); removed at exit"
        ),
    )


def options_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> SidecarOptions:
    programs = tuple(
        agents.preset(value) if kind == "agent" else agents.parse_run(value) for kind, value in args.programs
    )
    agents.check_unique(programs)
    if not 0 <= args.grace <= 3600:
        raise SettingsError("--grace", f"expected 0..3600 seconds, got {args.grace}")
    if args.env_pid is not None:
        envexport.resolve_pid(args.env_pid, setting="--env-pid")  # validate now, read at start
    # Asked for explicitly, the service applies it (or fails); switched off explicitly, nothing
    # is tried; otherwise it is applied when the privilege is there.
    explicit = args.netfilter is not None or "METAMOCK_NETFILTER" in environ
    return SidecarOptions(
        programs=programs,
        restart=Restart(args.restart),
        grace=args.grace,
        allow=envexport.AllowList.with_extra(args.allow),
        env_pid=args.env_pid,
        profile_script=_target(args.profile_script, PROFILE_SCRIPT, PROFILE_SCRIPT.parent),
        systemd_dir=_target(args.systemd_dir, SYSTEMD_DIR, SYSTEMD_DIR),
        netfilter=None if not explicit else True if args.netfilter else None,
    )


def _target(given: str | None, default: Path, directory: Path) -> Path | None:
    """An explicit target as given ('' = none); the default only where this user may write."""
    if given is not None:
        return Path(given) if given else None
    return default if may_write_in(directory) else None


def run(args: argparse.Namespace) -> int:
    environ = dict(os.environ)  # the edge: the entrypoint's own, ECS-injected environment
    options = options_from_args(args, environ)
    settings = settings_from_args(args, environ)
    agents.check_installed(options.programs, environ)  # before serving: no restarting a typo
    if options.netfilter is None and "METAMOCK_NETFILTER" in environ and not settings.netfilter:
        options = dataclasses.replace(options, netfilter=False)
    from metamock.netfilter.privilege import has_net_admin

    # Plain asyncio, not uvloop: the supervisor's SIGCHLD handler must be the only reaper.
    return asyncio.run(run_sidecar(settings, options, environ, dict(os.environb), has_net_admin()))
