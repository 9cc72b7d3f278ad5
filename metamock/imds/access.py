"""The access log (`--access-log`): one INFO line per request on the `metamock.access` logger.

    GET /latest/meta-data/instance-id 200 19 B 0.3 ms token=yes agent="Boto3/1.34"

The same values are the record's fields (`method`, `path`, `status`, `bytes`, `ms`, `token`,
`remote`, `agent`), so `--log-format json` gives one queryable object per request. Never a token
and never a query string (a client may put anything there); the path and the User-Agent are cut
and escaped, as a hostile client chooses them. `ms` is the time in the handler, until the answer
is ready to be written.

Only built when the access log is on (`make_server(access_log=True)`): off costs nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from metamock.imds.counters import printable
from metamock.imds.wire import TOKEN_HEADER

LOGGER = "metamock.access"
MAX_PATH = 512
MAX_AGENT = 128

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class AccessLogged:
    """`handler`, with one access-log line per request it answers."""

    def __init__(self, handler: Handler, logger: logging.Logger | None = None) -> None:
        self._handler = handler
        self._log = logger or logging.getLogger(LOGGER)

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        start = time.perf_counter()
        response = await self._handler(request)
        ms = round((time.perf_counter() - start) * 1000, 2)
        raw = request.raw_path
        query = raw.find("?")
        path = printable(raw[:query] if query >= 0 else raw, MAX_PATH)
        method = printable(request.method, 16)
        size = response.content_length or 0
        token = TOKEN_HEADER in request.headers
        agent = printable(request.headers.get("User-Agent", ""), MAX_AGENT)
        fields = {
            "method": method,
            "path": path,
            "status": response.status,
            "bytes": size,
            "ms": ms,
            "token": token,
            "remote": request.remote or "",
            "agent": agent,
        }
        self._log.info(
            "%s %s %d %d B %.2f ms token=%s agent=%s",
            method, path, response.status, size, ms, "yes" if token else "no", _quoted(agent),
            extra=fields,
        )  # fmt: skip
        return response


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
