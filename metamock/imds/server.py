"""The IMDS HTTP face, on aiohttp's low-level server: one handler, routing on the raw path.

The handler only reads the current tree (an immutable value swapped by the service), verifies
tokens with one HMAC, and sends pre-rendered bytes. Nothing here waits on an upstream except the
bounded on-demand credential fetch when the tree has none.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from typing import Protocol

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from metamock.imds.tokens import MAX_TTL, MIN_TTL, TokenSigner
from metamock.imds.tree import TEXT, Node, Tree
from metamock.translate import API_VERSIONS

log = logging.getLogger(__name__)

TOKEN_HEADER = "X-aws-ec2-metadata-token"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
_DATED = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_VERSIONS = frozenset(API_VERSIONS)
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


class TreeHolder(Protocol):
    """What the server needs from the service: the current tree and an on-demand credential fetch."""

    @property
    def tree(self) -> Tree: ...

    def now(self) -> float: ...

    async def ensure_credentials(self, timeout: float) -> bool:
        """Fetch credentials (bounded by `timeout`) when the tree has none; True if the tree changed."""
        ...


class ImdsHandler:
    """The request handler. `tokens_required` = IMDSv1 off; `hop_limit` = IP TTL of token replies."""

    def __init__(
        self,
        holder: TreeHolder,
        signer: TokenSigner,
        *,
        tokens_required: bool = False,
        hop_limit: int = 1,
        extra_hosts: frozenset[str] = frozenset(),
        credential_wait: float = 0.5,
    ) -> None:
        self._holder = holder
        self._signer = signer
        self._required = tokens_required
        self._hop_limit = hop_limit
        self._hosts = _METADATA_HOSTS | extra_hosts
        self._credential_wait = credential_wait
        self._base = {"Server": "EC2ws", "Accept-Ranges": "none"}

    def _headers(self, content_type: str, tree: Tree | None = None) -> dict[str, str]:
        headers = {**self._base, "Content-Type": content_type}
        if tree is not None:
            headers["Last-Modified"] = formatdate(tree.built_at, usegmt=True)
        return headers

    def _empty(self, status: int, **extra: str) -> web.Response:
        return web.Response(status=status, headers={**self._base, "Content-Type": TEXT, **extra})

    def _host_allowed(self, request: web.BaseRequest) -> bool:
        host = request.headers.get("Host")
        if host is None:
            return True  # HTTP/1.0 clients; a browser always sends Host
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return name.lower() in self._hosts

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        raw = request.raw_path
        query = raw.find("?")
        if query >= 0:
            raw = raw[:query]
        segments = [s for s in raw.split("/") if s]
        if not self._host_allowed(request):
            # DNS rebinding guard: a browser tricked into calling us carries a foreign Host.
            return self._empty(403)
        method = request.method
        is_token_path = len(segments) == 3 and segments[1:] == ["api", "token"]
        if method == "PUT":
            return self._put_token(request, raw, segments, is_token_path)
        if method not in ("GET", "HEAD"):
            return self._empty(405, Allow="OPTIONS, PUT" if is_token_path else "GET, HEAD")
        if is_token_path:
            return self._empty(405, Allow="OPTIONS, PUT")
        token = request.headers.get(TOKEN_HEADER)
        if token is None:
            if self._required:
                return self._empty(401)
        elif not self._signer.valid(token):
            return self._empty(401)
        if not segments:
            return web.Response(body=_VERSIONS_BODY, headers=self._headers(TEXT))
        version = segments[0]
        if version not in _VERSIONS and not _DATED.match(version):
            return self._not_found()
        path = "/".join(segments[1:])
        tree = self._holder.tree
        node = tree.get(path)
        missing = node is None or _expired(node, self._holder.now())
        if (
            missing
            and _wants_credentials(segments)
            and await self._holder.ensure_credentials(self._credential_wait)
        ):
            tree = self._holder.tree
            node = tree.get(path)
        if node is None or _expired(node, self._holder.now()):
            return self._not_found()
        return web.Response(body=node.body, headers=self._headers(node.content_type, tree))

    def _not_found(self) -> web.Response:
        return web.Response(status=404, body=NOT_FOUND_BODY, headers=self._headers("text/html"))

    def _put_token(
        self, request: web.BaseRequest, raw: str, segments: list[str], is_token_path: bool
    ) -> web.Response:
        if not is_token_path:
            return self._empty(405, Allow="GET, HEAD")
        if segments[0] != "latest" or raw.endswith("/"):
            # EC2 answers 403 to versioned or slash-terminated token paths (observed).
            return self._empty(403)
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
            headers={**self._headers(TEXT), TTL_HEADER: str(ttl)},
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


def _expired(node: Node, now: float) -> bool:
    return node.expires is not None and now >= node.expires


def _wants_credentials(segments: list[str]) -> bool:
    return len(segments) >= 3 and segments[1] == "meta-data" and segments[2] == "iam"


Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


# Request line and header limits: above a 10 KB token, below anything that could cost memory.
MAX_LINE = 16384
MAX_FIELD = 16384


class _DropClientErrors(logging.Filter):
    """aiohttp logs malformed requests at ERROR with the offending bytes (maybe a token). A bad
    request is the client's problem: it gets a 400 and we log nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, HttpProcessingError)


def make_server(handler: Handler) -> web.Server:
    """aiohttp's low-level server around `handler`, without an access log (it would log paths at
    a rate that costs more than the answers)."""
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _DropClientErrors) for f in server_log.filters):
        server_log.addFilter(_DropClientErrors())
    return web.Server(handler, access_log=None, max_line_size=MAX_LINE, max_field_size=MAX_FIELD)
