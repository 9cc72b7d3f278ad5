"""`metamock healthcheck`: exit 0 when the local server answers a token PUT and a GET with it.

Made for an ECS container `healthCheck`: standard library only, so it starts fast in any image.
"""

from __future__ import annotations

import argparse
import http.client
import os

from metamock.imds.wire import TOKEN_HEADER, TOKEN_PATH, TTL_HEADER, request
from metamock.settings import add_port_argument, client_port

INSTANCE_ID_PATH = "/latest/meta-data/instance-id"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_port_argument(parser)
    parser.add_argument("--host", default="127.0.0.1", help="server address (default 127.0.0.1)")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds per request (default 2)")


def check(host: str, port: int, timeout: float) -> str | None:
    """None when healthy, else what went wrong (never a token)."""
    try:
        status, body = request(host, port, "PUT", TOKEN_PATH, {TTL_HEADER: "60"}, timeout=timeout)
        token = body.decode("ascii", "replace")
        if status != 200 or not token:
            return f"token PUT answered {status}"
        status, body = request(host, port, "GET", INSTANCE_ID_PATH, {TOKEN_HEADER: token}, timeout=timeout)
        if status != 200 or not body.startswith(b"i-"):
            return f"instance-id GET answered {status}"
    except (OSError, http.client.HTTPException) as exc:
        return f"no answer from {host}:{port}: {exc}"
    return None


def run(args: argparse.Namespace) -> int:
    port = client_port(args.port, os.environ)
    problem = check(args.host, port, args.timeout)
    if problem:
        print(f"metamock healthcheck: unhealthy: {problem}")
        return 1
    return 0
