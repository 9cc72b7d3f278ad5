"""IMDSv2 on the wire, for the clients metamock itself is (healthcheck, the redirect's probe).

The names the server and its clients share (the token path and headers), and one plain request:
standard library only, so `metamock healthcheck` stays free of aiohttp and starts fast; no
proxies (http.client never reads *_PROXY).
"""

from __future__ import annotations

import http.client

TOKEN_PATH = "/latest/api/token"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
MAX_BODY = 4096  # what a client here reads of an answer (a token, an instance id)


def request(
    host: str, port: int, method: str, path: str, headers: dict[str, str], *, timeout: float
) -> tuple[int, bytes]:
    """One request on a connection of its own; (status, the first MAX_BODY bytes of the body).
    Raises OSError / http.client.HTTPException as http.client does."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read(MAX_BODY)
    finally:
        conn.close()
