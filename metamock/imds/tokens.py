"""IMDSv2 session tokens: HMAC over the expiry with a per-process random key.

Nothing is stored per token, so any number can exist at once and none can be forged; a restart
invalidates them all (as a new instance would). Tokens never appear in logs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import struct

from metamock.clock import Clock

MIN_TTL = 1
MAX_TTL = 21600
_VERSION = b"\x01"
_MAC_BYTES = 20
_RAW_BYTES = 1 + 8 + _MAC_BYTES
TOKEN_LENGTH = len(base64.urlsafe_b64encode(b"\0" * _RAW_BYTES))


# Verified tokens remembered (token -> expiry ms) so a client reusing its token costs one dict
# lookup; bounded, cleared when full. A token is only ever added after its MAC checked out.
_CACHE_MAX = 4096


class TokenSigner:
    def __init__(self, clock: Clock, key: bytes | None = None) -> None:
        self._clock = clock
        self._key = key or secrets.token_bytes(32)
        self._verified: dict[str, int] = {}

    def __repr__(self) -> str:
        return "TokenSigner(key=****)"

    def _mac(self, payload: bytes) -> bytes:
        return hmac.digest(self._key, payload, hashlib.sha256)[:_MAC_BYTES]

    def issue(self, ttl: int) -> str:
        """A token valid for `ttl` seconds from now."""
        if not MIN_TTL <= ttl <= MAX_TTL:
            raise ValueError("ttl out of range")
        expiry_ms = int((self._clock.time() + ttl) * 1000)
        payload = _VERSION + struct.pack(">Q", expiry_ms)
        return base64.urlsafe_b64encode(payload + self._mac(payload)).decode("ascii")

    def valid(self, token: str) -> bool:
        """True when `token` was issued by this signer and has not expired."""
        known = self._verified.get(token)
        if known is not None:
            return bool(known > self._clock.time() * 1000)
        if len(token) != TOKEN_LENGTH:
            return False
        try:
            raw = base64.urlsafe_b64decode(token)
        except (binascii.Error, ValueError):
            return False
        if len(raw) != _RAW_BYTES or raw[:1] != _VERSION:
            return False
        payload, mac = raw[:9], raw[9:]
        if not hmac.compare_digest(mac, self._mac(payload)):
            return False
        (expiry_ms,) = struct.unpack(">Q", payload[1:])
        if len(self._verified) >= _CACHE_MAX:
            self._verified.clear()
        self._verified[token] = expiry_ms
        return bool(expiry_ms > self._clock.time() * 1000)
