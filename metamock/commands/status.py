"""`metamock status`: what the running server does, asked over its control socket.

Exit 0 when a server answered, 1 when none did (one line saying why). Standard library only on
this side, so it starts fast in any image; the server collects the answer (metamock.status).
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
from metamock.errors import MetamockError
from metamock.settings import add_port_argument, client_port

TIMEOUT = 10.0  # the server checks the redirect live (at most 4 s)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_port_argument(parser, "the server's port, to find its control socket")
    parser.add_argument("--json", action="store_true", help="print the answer as one JSON object")
    parser.add_argument("--socket", type=Path, help="control socket path (default: found from --port)")


def ask(
    port: int, environ: Mapping[str, str], *, redirect: bool = True, timeout: float = TIMEOUT
) -> dict[str, Any]:
    """The status answer of the server on `port` in this network namespace; MetamockError when
    none answers (PrivilegeError when its socket is another user's)."""
    path = locate_socket(port, environ)
    return _ask(path, netns_key(), redirect=redirect, timeout=timeout)


def _ask(path: Path, netns: str | None, *, redirect: bool, timeout: float) -> dict[str, Any]:
    request: dict[str, Any] = {"op": "server-status"}
    if not redirect:
        request["redirect"] = False
    answer = call(path, request, timeout=timeout, netns=netns)
    if not answer.get("ok"):
        raise MetamockError(f"the server refused: {answer.get('error', 'no reason given')}")
    return answer


def run(args: argparse.Namespace) -> int:
    if args.socket is not None:
        answer = _ask(Path(args.socket), None, redirect=True, timeout=TIMEOUT)
    else:
        answer = ask(client_port(args.port, os.environ), os.environ)
    answer.pop("ok", None)
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        print(render(answer, time.time()))
    return 0


# -- text ----------------------------------------------------------------------------------------


def duration(seconds: float) -> str:
    """`3d 4h`, `2h 5m`, `4m 10s`, `12s`: two units at most."""
    seconds = int(max(0, seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


INDENT = " " * 13  # under the values of the lines above


def render(status: Mapping[str, Any], now: float) -> str:
    """The answer as aligned lines for a person."""
    lines = [
        f"metamock {status.get('version', '?')}, up {duration(status.get('uptime', 0))} "
        f"(since {status.get('started_at', '?')})",
        f"source       {status.get('source')}",
        f"listening    {', '.join(status.get('listen', []))}",
        f"tokens       {status.get('tokens')}",
        f"access log   {'on' if status.get('access_log') else 'off'}",
    ]
    lines += _credentials(status.get("credentials") or {})
    lines += _redirect(status.get("redirect") or {})
    scenarios = status.get("scenarios") or []
    lines.append("scenarios    " + (", ".join(_scenario(s) for s in scenarios) if scenarios else "none"))
    lines += _requests(status.get("requests") or {})
    return "\n".join(lines)


def _credentials(creds: Mapping[str, Any]) -> list[str]:
    if creds.get("role") is None:
        first = "credentials  none (the role paths answer 404)"
    else:
        first = (
            f"credentials  role {creds['role']}, expires {creds['expiration']} "
            f"(in {duration(creds.get('expires_in') or 0)}), refreshed {creds.get('last_refresh')}"
        )
    error = creds.get("last_error")
    second = (
        f"             last upstream error: {error} (at {creds.get('last_error_at')})"
        if error
        else ("             last upstream error: none")
    )
    return [first, second]


def _redirect(redirect: Mapping[str, Any]) -> list[str]:
    """`redirect     working (backend nft)`, then what netfilter status found, one item a line."""
    if not redirect.get("checked", True):
        return ["redirect     not checked"]
    if not redirect.get("requested"):
        return ["redirect     not requested (the server runs without --netfilter)"]
    state = "working" if redirect.get("working") else "NOT WORKING"
    lines = [f"redirect     {state} (backend {redirect.get('backend') or 'none'})"]
    detail = (line.strip() for line in str(redirect.get("detail", "")).splitlines())
    lines += [f"{INDENT}{line}" for line in detail if line]
    if redirect.get("repairs"):
        last = redirect.get("last_repair")
        lines.append(f"{INDENT}put back {redirect['repairs']} time(s) since start, last: {last}")
    return lines


def _scenario(scenario: Mapping[str, Any]) -> str:
    kind = scenario.get("kind", "?")
    when = scenario.get("appears")
    return f"{kind} (appears {when})" if when else str(kind)


def _requests(requests: Mapping[str, Any]) -> list[str]:
    by_status = requests.get("by_status") or {}
    counts = ", ".join(f"{status}: {count}" for status, count in by_status.items())
    lines = [f"requests     {requests.get('total', 0)} since start" + (f" ({counts})" if counts else "")]
    for status, what in (("404", "not found"), ("401", "refused, no or bad token")):
        top = requests.get(f"top_{status}") or []
        if not top:
            continue
        lines.append(f"top {status}s     ({what})")
        lines += [f"  {count:>8}  {path}" for path, count in top]
    return lines
