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
from metamock.sidecar import PROFILE_SCRIPT, SYSTEMD_DIR, SidecarOptions, run_sidecar
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
    add("--run", action=_Programs, const="run", metavar="NAME=COMMAND", help="run a command (no shell)")
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
        default=str(PROFILE_SCRIPT),
        help=f"shell export of the variables for login shells (default {PROFILE_SCRIPT}; '' = none)",
    )
    add(
        "--systemd-dir",
        dest="systemd_dir",
        metavar="DIR",
        default=str(SYSTEMD_DIR),
        help=f"<unit>.service.d/ drop-ins for the preset agents (default {SYSTEMD_DIR}; '' = none)",
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
        profile_script=Path(args.profile_script) if args.profile_script else None,
        systemd_dir=Path(args.systemd_dir) if args.systemd_dir else None,
        netfilter=None if not explicit else True if args.netfilter else None,
    )


def _has_net_admin() -> bool:
    from metamock.netfilter.privilege import has_net_admin

    try:
        return has_net_admin(Path("/proc/self/status").read_text(encoding="ascii", errors="replace"))
    except OSError:
        return False


def run(args: argparse.Namespace) -> int:
    environ = dict(os.environ)  # the edge: the entrypoint's own, ECS-injected environment
    options = options_from_args(args, environ)
    settings = settings_from_args(args, environ)
    if options.netfilter is None and "METAMOCK_NETFILTER" in environ and not settings.netfilter:
        options = dataclasses.replace(options, netfilter=False)
    # Plain asyncio, not uvloop: the supervisor's SIGCHLD handler must be the only reaper.
    return asyncio.run(run_sidecar(settings, options, environ, dict(os.environb), _has_net_admin()))
