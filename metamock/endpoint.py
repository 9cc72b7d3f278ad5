"""Where clients reach the server: the endpoint variable every SDK and agent honours, and which
local address to advise (one the server really listens on)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from metamock.values import is_loopback

ENDPOINT_VAR = "AWS_EC2_METADATA_SERVICE_ENDPOINT"


def client_host(hosts: Sequence[str]) -> str:
    """An address a local client reaches the server on, among those it listens on: IPv4 loopback
    first (every client speaks it), a wildcard as its loopback."""
    if not hosts or "127.0.0.1" in hosts or "0.0.0.0" in hosts:
        return "127.0.0.1"
    for host in hosts:
        if host == "localhost" or (ipaddress.ip_address(host).version == 4 and is_loopback(host)):
            return host
    if "::1" in hosts or "::" in hosts:
        return "::1"
    return hosts[0]


def bracket(host: str) -> str:
    """`host` as it stands before `:port` in a URL or a `Host` header: IPv6 in brackets."""
    return f"[{host}]" if ":" in host else host


def endpoint_url(port: int, host: str = "127.0.0.1") -> str:
    """`http://host:port/`, IPv6 hosts in brackets."""
    return f"http://{bracket(host)}:{port}/"


def endpoint_advice(port: int, host: str = "127.0.0.1") -> str:
    """What to set so the SDKs talk to metamock directly: `AWS_EC2_METADATA_SERVICE_ENDPOINT=...`."""
    return f"{ENDPOINT_VAR}={endpoint_url(port, host)}"
