"""`metamock trigger`: trigger or clear EC2 life-cycle scenarios of a running server.

Talks to the server's control socket (a unix socket, mode 0600), never to the IMDS port: nothing
reachable over TCP changes state. Standard library only, so it starts fast in any image.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from metamock.control_socket import call, locate_socket, netns_key
from metamock.errors import MetamockError, SettingsError
from metamock.scenarios import ACTIONS, EVENT_CODES, EVENT_STATES, KINDS, ScenarioError, build
from metamock.settings import add_port_argument, client_port


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("scenario", nargs="?", choices=KINDS, help="the scenario to trigger (or to --clear)")
    add("--clear", action="store_true", help="remove scenarios (all, or the one named)")
    add("--status", action="store_true", help="print the scheduled scenarios as JSON")
    add("--socket", type=Path, help="control socket path (default: found from --port)")
    add_port_argument(parser, "the server's port, to find its socket")
    when = parser.add_mutually_exclusive_group()
    when.add_argument("--delay", type=float, help="seconds from now until it appears (default 0)")
    when.add_argument("--at", help="when it appears, e.g. 2026-01-07T01:03:47Z")
    add("--action", choices=ACTIONS, help="spot: terminate (default), stop or hibernate")
    add("--in", dest="in_", type=float, help="spot: seconds from the notice to its time (default 120)")
    add("--code", choices=EVENT_CODES, help="maintenance: event code (default system-reboot)")
    add("--state", choices=EVENT_STATES, help="maintenance: event state (default active)")
    add("--description", help="maintenance: event description")
    add("--not-before", dest="not_before", help="maintenance: a time, or seconds after it appears")
    add("--not-after", dest="not_after", help="maintenance: a time, or seconds after it appears")
    add("--not-before-deadline", dest="deadline", help="maintenance: a time, or seconds after it appears")


_OPTIONS = {  # CLI dest -> (request option, the scenarios it applies to)
    "action": ("action", {"spot"}),
    "in_": ("in", {"spot"}),
    "code": ("code", {"maintenance"}),
    "state": ("state", {"maintenance"}),
    "description": ("description", {"maintenance"}),
    "not_before": ("not-before", {"maintenance"}),
    "not_after": ("not-after", {"maintenance"}),
    "deadline": ("not-before-deadline", {"maintenance"}),
}


def request_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The control request the arguments ask for; SettingsError for a combination that makes no sense."""
    if args.status:
        return {"op": "status"}
    if args.clear:
        return {"op": "clear", "scenario": args.scenario}
    if args.scenario is None:
        raise SettingsError("scenario", f"name one of {', '.join(KINDS)} (or pass --clear / --status)")
    options: dict[str, Any] = {}
    if args.delay is not None:
        options["delay"] = args.delay
    if args.at is not None:
        options["at"] = args.at
    for dest, (key, kinds) in _OPTIONS.items():
        value = getattr(args, dest)
        if value is None:
            continue
        if args.scenario not in kinds:
            flag = "--" + key if dest != "in_" else "--in"
            raise SettingsError(flag, f"applies to {', '.join(sorted(kinds))}, not {args.scenario}")
        options[key] = _number_or_text(value)
    try:  # what the server would refuse is refused here, as a bad argument (exit 2)
        build(args.scenario, options, time.time())
    except ScenarioError as exc:
        raise SettingsError(f"--{exc.key}" if exc.key else args.scenario, str(exc)) from None
    return {"op": "trigger", "scenario": args.scenario, "options": options}


def _number_or_text(value: Any) -> Any:
    """`--not-before 3600` is seconds after the event appears; anything else is a time."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def socket_path(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[Path, str | None]:
    """The socket to talk to, and the network namespace the request is for (None: --socket given,
    the user named the server)."""
    if args.socket is not None:
        return Path(args.socket), None
    return locate_socket(client_port(args.port, environ), environ), netns_key()


def run(args: argparse.Namespace) -> int:
    request = request_from_args(args)
    path, netns = socket_path(args, os.environ)
    answer = call(path, request, netns=netns)
    if not answer.get("ok"):
        raise MetamockError(f"the server refused: {answer.get('error', 'no reason given')}")
    if args.status:
        print(json.dumps(answer.get("scenarios", []), indent=2))
    elif args.clear:
        print(f"cleared {answer.get('cleared', 0)} scenario(s)")
    else:
        print(json.dumps(answer.get("triggered", {})))
    return 0
