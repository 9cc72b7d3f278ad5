"""The hop limit is the IP TTL / IPv6 hop limit of the token response, seen on the wire."""

from __future__ import annotations

import asyncio
import socket
import struct
import time

import pytest

from tests.conftest import require_root
from tests.httpraw import request
from tests.servers import running_service

ETH_P_ALL = 0x0003


def _capture_socket() -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(ETH_P_ALL))
    sock.bind(("lo", 0))
    sock.setblocking(False)
    return sock


def _ttls_from(sock: socket.socket, port: int, marker: bytes) -> list[int]:
    """TTL / hop limit of every captured TCP segment sent from `port` whose payload has `marker`."""
    found = []
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        try:
            frame = sock.recv(65535)
        except BlockingIOError:
            time.sleep(0.01)
            continue
        ip = frame[14:]
        version = ip[0] >> 4
        if version == 4 and ip[9] == 6:
            ttl, tcp = ip[8], ip[(ip[0] & 0x0F) * 4 :]
        elif version == 6 and ip[6] == 6:
            ttl, tcp = ip[7], ip[40:]
        else:
            continue
        (src_port,) = struct.unpack(">H", tcp[:2])
        payload = tcp[(tcp[12] >> 4) * 4 :]
        if src_port == port and marker in payload:
            found.append(ttl)
            break
    return found


@pytest.mark.root
@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
async def test_token_response_carries_the_hop_limit(family: str) -> None:
    require_root()
    host = "127.0.0.1" if family == "ipv4" else "::1"
    capture = _capture_socket()
    try:
        async with running_service(host=[host], hop_limit="3") as svc:
            resp = await request(
                svc.port,
                "PUT",
                "/latest/api/token",
                {"X-aws-ec2-metadata-token-ttl-seconds": "60"},
                host=host,
            )
            assert resp.status == 200
            ttls = await asyncio.to_thread(
                _ttls_from, capture, svc.port, b"X-aws-ec2-metadata-token-ttl-seconds"
            )
    finally:
        capture.close()
    assert ttls == [3]
