"""The IMDS HTTP face, on aiohttp's low-level server: one handler, routing on the raw path.

The handler only reads the current tree (an immutable value swapped by the service), verifies
tokens with one HMAC, and sends pre-rendered bytes. Nothing here waits on an upstream except the
bounded on-demand credential fetch when the tree has none.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import NamedTuple, Protocol

from aiohttp import web

from metamock.imds.counters import RequestCounters
from metamock.imds.limits import ConnectionLimits, LimitedServer
from metamock.imds.tokens import MAX_TTL, MIN_TTL, TokenSigner
from metamock.imds.tree import BASE_HEADERS, TEXT, Tree
from metamock.imds.versions import API_VERSIONS, is_version, path_segments
from metamock.imds.wire import TOKEN_HEADER, TTL_HEADER

log = logging.getLogger(__name__)

_VERSIONS_BODY = "\n".join(API_VERSIONS).encode()
_METADATA_HOSTS = frozenset({"169.254.169.254", "[fd00:ec2::254]", "127.0.0.1", "[::1]", "localhost"})
NOT_FOUND_BODY = b"""<?xml version="1.0" encoding="iso-8859-1"?>
<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN"
\t"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">
<html xmlns="http://www.w3.org/1999/xhtml" xml:lang="en" lang="en">
 <head>
  <title>404 - Not Found</title>
 </head>
 <body>
  <h1>404 - Not Found</h1>
 </body>
</html>
"""


# Route kinds.
TOKEN, BAD_TOKEN_PATH, VERSIONS, METADATA, MISSING = range(5)
_ROUTE_CACHE_MAX = 4096
_CREDENTIALS_DIR = "meta-data/iam/security-credentials"


class Route(NamedTuple):
    kind: int
    key: str  # the tree path for METADATA
    iam: bool  # under meta-data/iam/: a miss may be answered after an on-demand credential fetch


class TreeHolder(Protocol):
    """What the server needs from the service: the current tree and an on-demand credential fetch."""

    @property
    def tree(self) -> Tree: ...

    def now(self) -> float: ...

    async def ensure_credentials(self, timeout: float) -> bool:
        """Fetch credentials (bounded by `timeout`) when the tree has none; True if the tree changed."""
        ...


class ImdsHandler:
    """The request handler. `tokens_required` = IMDSv1 off; `hop_limit` = IP TTL of token replies;
    `counters` counts every answer (`metamock status`)."""

    def __init__(
        self,
        holder: TreeHolder,
        signer: TokenSigner,
        *,
        tokens_required: bool = False,
        hop_limit: int = 1,
        extra_hosts: frozenset[str] = frozenset(),
        credential_wait: float = 0.5,
        counters: RequestCounters | None = None,
    ) -> None:
        self._holder = holder
        self.counters = counters if counters is not None else RequestCounters()
        self._count = self.counters.count
        self._now = holder.now
        self._signer = signer
        self._required = tokens_required
        self._hop_limit = hop_limit
        self._hosts = _METADATA_HOSTS | extra_hosts
        self._credential_wait = credential_wait
        self._host_verdicts: dict[str, bool] = {}
        self._routes: dict[str, Route] = {}
        self._text_headers = {**BASE_HEADERS, "Content-Type": TEXT}
        self._not_found_headers = {**BASE_HEADERS, "Content-Type": "text/html"}

    def _empty(self, status: int, **extra: str) -> web.Response:
        return web.Response(status=status, headers={**self._text_headers, **extra})

    def _host_allowed(self, host: str) -> bool:
        """Whether a Host header names the metadata service or a loopback listener (no Host at
        all is HTTP/1.0; browsers always send one)."""
        known = self._host_verdicts.get(host)
        if known is not None:
            return known
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        verdict = name.lower() in self._hosts
        if len(self._host_verdicts) < 256 and len(host) <= 256:  # bounded: hostile clients cannot grow it
            self._host_verdicts[host] = verdict
        return verdict

    def _route(self, raw_path: str) -> Route:
        """What a raw path means, independent of the tree; cached, since clients repeat paths."""
        route = self._routes.get(raw_path)
        if route is not None:
            return route
        segments = path_segments(raw_path)
        if len(segments) == 3 and segments[1] == "api" and segments[2] == "token":
            # EC2 answers 403 to versioned or slash-terminated token paths (observed).
            exact = segments[0] == "latest" and not raw_path.partition("?")[0].endswith("/")
            route = Route(TOKEN if exact else BAD_TOKEN_PATH, "", False)
        elif not segments:
            route = Route(VERSIONS, "", False)
        elif not is_version(segments[0]):
            route = Route(MISSING, "", False)
        else:
            route = Route(
                METADATA, "/".join(segments[1:]), len(segments) >= 3 and segments[1:3] == ["meta-data", "iam"]
            )
        if len(raw_path) > 256:  # bounded in bytes too: 4096 hostile 16 KiB paths would hold 128 MiB
            return route
        if len(self._routes) >= _ROUTE_CACHE_MAX:
            self._routes.clear()  # bounded: unique hostile paths only cost a refill
        self._routes[raw_path] = route
        return route

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        # Every answer is counted (`metamock status`): the hot one, a metadata hit, by one
        # attribute increment; the others through `_done`, which also keeps 401/404 paths.
        done = self._done
        headers = request.headers
        host = headers.get("Host")
        if host is not None and not self._host_allowed(host):
            # DNS rebinding guard: a browser tricked into calling us carries a foreign Host.
            return done(request, self._empty(403))
        route = self._route(request.raw_path)
        kind = route.kind
        method = request.method
        if method == "PUT":
            if kind == TOKEN:
                return done(request, self._put_token(request))
            return done(
                request, self._empty(403) if kind == BAD_TOKEN_PATH else self._empty(405, Allow="GET, HEAD")
            )
        if kind in (TOKEN, BAD_TOKEN_PATH):
            return done(request, self._empty(405, Allow="OPTIONS, PUT"))
        if method != "GET" and method != "HEAD":  # noqa: PLR1714
            return done(request, self._empty(405, Allow="GET, HEAD"))
        token = headers.get(TOKEN_HEADER)
        if token is None:
            if self._required:
                return done(request, self._empty(401))
        elif not self._signer.valid(token):
            return done(request, self._empty(401))
        if kind == METADATA:
            node = self._holder.tree.get(route.key)
            if node is not None and (node.expires is None or self._now() < node.expires):
                body = node.rendered
                if body is None:  # a lazy leaf's first request (the signatures): off the loop
                    body = await node.render()
                self.counters.ok += 1
                return web.Response(body=body, headers=node.headers.copy())
            # Fetch on demand only when credentials are missing or expired, not for any unknown
            # name under iam/ (that rebuilt the tree per request: an unauthenticated CPU amplifier).
            fetch = node is not None or self._holder.tree.get(_CREDENTIALS_DIR) is None
            if route.iam and fetch and await self._holder.ensure_credentials(self._credential_wait):
                node = self._holder.tree.get(route.key)
                if node is not None and (node.expires is None or self._now() < node.expires):
                    # Credentials are never lazy leaves: `body` renders nothing here.
                    return done(request, web.Response(body=node.body, headers=node.headers.copy()))
            return done(request, self._not_found())
        if kind == VERSIONS:
            return done(request, web.Response(body=_VERSIONS_BODY, headers=self._text_headers))
        return done(request, self._not_found())

    def _done(self, request: web.BaseRequest, response: web.Response) -> web.Response:
        self._count(response.status, request.raw_path)
        return response

    def _not_found(self) -> web.Response:
        return web.Response(status=404, body=NOT_FOUND_BODY, headers=self._not_found_headers)

    def _put_token(self, request: web.BaseRequest) -> web.Response:
        if "X-Forwarded-For" in request.headers:
            return self._empty(403)
        ttl_raw = request.headers.get(TTL_HEADER, "")
        if not (ttl_raw.isascii() and ttl_raw.isdigit() and len(ttl_raw) <= 5):
            return self._empty(400)
        ttl = int(ttl_raw)
        if not MIN_TTL <= ttl <= MAX_TTL:
            return self._empty(400)
        self._set_hop_limit(request)
        return web.Response(
            body=self._signer.issue(ttl).encode(),
            headers={**self._text_headers, TTL_HEADER: str(ttl)},
        )

    def _set_hop_limit(self, request: web.BaseRequest) -> None:
        transport = request.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is None:
            return
        try:
            if sock.family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, self._hop_limit)
                # IPv4-mapped peers on a dual-stack socket use the IPv4 TTL.
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, self._hop_limit)
            else:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, self._hop_limit)
        except OSError as exc:  # pragma: no cover - depends on the socket type
            log.debug("could not set the hop limit: %s", exc)


Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


# Request line and header limits: above a 10 KB token, below anything that could cost memory.
MAX_LINE = 16384
MAX_FIELD = 16384


def make_server(
    handler: Handler, *, limits: ConnectionLimits | None = None, access_log: bool = False
) -> LimitedServer:
    """aiohttp's low-level server around `handler` within `limits` (default: the production
    `ConnectionLimits()`). aiohttp's own access log stays off (its format shows the query string,
    where a token may hide); `access_log` wraps `handler` in ours (metamock.imds.access), so when
    it is off the hot path does not even test a flag.

    Process-wide settings (the `Server` banner of aiohttp's own 400s, the aiohttp log filter) are
    not made here: `metamock.runtime.install_process_effects()` makes them once at start-up."""
    if access_log:
        from metamock.imds.access import AccessLogged

        handler = AccessLogged(handler)
    return LimitedServer(
        handler,
        limits=limits,
        access_log=None,
        max_line_size=MAX_LINE,
        max_field_size=MAX_FIELD,
    )
