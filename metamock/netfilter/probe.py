"""A real connection through the redirect, proving it ends at the server on 127.0.0.1:<port>.

A token is asked for through http://169.254.169.254:80 (where the redirect sends it), then used
on 127.0.0.1:<port> directly. A token is HMAC-signed by the server process that issued it and no
other server can forge one, so a 200 proves that what answers 169.254.169.254 is that very server;
a foreign IMDS (the real one, when the redirect is gone) hands out a token ours answers 401 to.
Standard library only (`metamock.imds.wire`), no proxies, 1 s per step.
"""

from __future__ import annotations

import http.client
import os
from collections.abc import Sequence
from dataclasses import dataclass

from metamock.imds.wire import TOKEN_HEADER, TOKEN_PATH, TTL_HEADER, request
from metamock.netfilter.routes import IMDS_V4

TIMEOUT = 1.0
CHECK_PATH = "/latest/meta-data/instance-id"


@dataclass(frozen=True)
class Probe:
    ok: bool | None  # None: not run
    detail: str


def probe(port: int, exclude_uids: Sequence[int] = ()) -> Probe:
    """Run the two requests; never raises."""
    uid = os.geteuid()
    if uid in exclude_uids:
        return Probe(None, f"probe not run: uid {uid} is excluded from the redirect, so its own "
                           f"requests would not be redirected (run it as another user)")  # fmt: skip
    try:
        status, body = request(IMDS_V4, 80, "PUT", TOKEN_PATH, {TTL_HEADER: "60"}, timeout=TIMEOUT)
    except (OSError, http.client.HTTPException) as exc:
        return Probe(False, f"connection fails: token PUT to {IMDS_V4}:80: {_why(exc)}")
    if status != 200 or not body:
        return Probe(False, f"connection fails: token PUT to {IMDS_V4}:80 answered HTTP {status}")
    token = body.decode("ascii", "replace").strip()
    try:
        status, _ = request("127.0.0.1", port, "GET", CHECK_PATH, {TOKEN_HEADER: token}, timeout=TIMEOUT)
    except (OSError, http.client.HTTPException) as exc:
        return Probe(False, f"connection fails: 127.0.0.1:{port}: {_why(exc)}")
    if status == 200:
        return Probe(True, f"connection verified: {IMDS_V4}:80 reaches the server on 127.0.0.1:{port}")
    return Probe(
        False,
        f"connection fails: the server on 127.0.0.1:{port} rejects the token {IMDS_V4}:80 issued "
        f"(HTTP {status}): {IMDS_V4}:80 is answered by another server",
    )


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {TIMEOUT:g} s"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__
