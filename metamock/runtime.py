"""Every process-wide effect metamock makes, in one place, made by `install_process_effects()`.

Libraries keep some settings in module globals and loggers shared by the whole process; changing
them from a factory (a server, a session) hides the change from whoever reads that factory's call
site. So they are all made here, once, at start-up, by whatever runs a service in this process
(`serve`, `sidecar`; tests and benchmarks that build servers themselves). The function is
idempotent: a second call changes nothing.

The effects, and why each is process-wide:

- `aiohttp.web_response.SERVER_SOFTWARE = "EC2ws"`. aiohttp answers malformed requests itself
  (400) with `Server: Python/x aiohttp/y`; EC2 says `EC2ws`, and a version banner helps nobody but
  an attacker. aiohttp has no per-server option: its responses read this module global (client
  requests do not: aiohttp's client reads its own copy for User-Agent).
- A filter on the `aiohttp.server` logger dropping records whose exception is an
  `HttpProcessingError`. aiohttp logs malformed requests at ERROR with the offending bytes (maybe a
  token); a bad request is the client's problem: it gets a 400 and we log nothing.
- The `botocore` and `aiobotocore` loggers at INFO at the lowest (a level already INFO or higher is
  kept). At DEBUG botocore logs response bodies (STS returns the secret key and token there) and
  signed request headers (the session token): those must never reach a log line, whatever
  `--verbose` says. The loggers' own level is set (not judged from the effective level), so the
  effect holds whether logging is configured before or after this call. The function that does
  it, `metamock.logs.quiet_secret_loggers()`, lives with the logging set-up (standard library only,
  for the client commands), which calls it too: `--debug-libraries` never reaches botocore.
"""

from __future__ import annotations

import logging

from aiohttp import web_response
from aiohttp.http_exceptions import HttpProcessingError

from metamock.imds.tree import SERVER
from metamock.logs import quiet_secret_loggers


class DropClientErrors(logging.Filter):
    """Drop aiohttp's ERROR records about malformed requests (see the module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, HttpProcessingError)


def install_process_effects() -> None:
    """Make every process-wide effect listed in the module docstring; idempotent."""
    web_response.SERVER_SOFTWARE = SERVER  # type: ignore[attr-defined]
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, DropClientErrors) for f in server_log.filters):
        server_log.addFilter(DropClientErrors())
    quiet_secret_loggers()
