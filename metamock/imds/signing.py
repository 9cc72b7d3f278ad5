"""Signatures for dynamic/instance-identity/{signature,pkcs7,rsa2048}.

Signed with a key generated per process (or loaded from a PEM file). Clients that only parse the
document are happy; nothing signed here verifies against AWS's public certificates, by design.
RSA key generation takes 50-300 ms of CPU. On the loop, at the first signature request, it
stalled every request in flight; awaited before listening it would add that much to the time to
ready (~60 ms of a ~275 ms start, measured). So the service calls `prepare_in_thread()` at
start-up, beside the rest of the start: the key is there before any client asks, except one
asking within those first milliseconds, which then waits for the rest of it (one asked for
without any `prepare` makes the key then).
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import logging
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class IdentitySigner:
    def __init__(self, key_file: Path | None = None) -> None:
        self._key_file = key_file
        self._lock = threading.Lock()
        self._material: tuple[Any, Any] | None = None
        self._preparing: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return "IdentitySigner(key=****)"

    @property
    def prepared(self) -> bool:
        """Whether the key and certificate exist (signing will not generate them)."""
        return self._material is not None

    def prepare(self) -> None:
        """Make (or load) the key and certificate now; blocking, so call it off the event loop."""
        self._key_and_cert()

    def prepare_in_thread(self) -> None:
        """Start `prepare()` in a thread of the running loop; `ready()` waits for it."""
        self._preparing = asyncio.ensure_future(asyncio.to_thread(self.prepare))
        self._preparing.add_done_callback(_log_failure)

    async def ready(self) -> None:
        """Wait for `prepare_in_thread()` (a waiter giving up does not cancel it)."""
        if self._preparing is not None:
            await asyncio.shield(self._preparing)

    def abandon(self) -> None:
        """Nothing waits for the key any more (the thread finishes on its own)."""
        if self._preparing is not None:
            self._preparing.cancel()

    def _key_and_cert(self) -> tuple[Any, Any]:
        with self._lock:
            if self._material is None:
                self._material = _make_material(self._key_file)
            return self._material

    def sign(self, document: bytes) -> dict[str, bytes]:
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import padding
        from cryptography.hazmat.primitives.serialization import pkcs7

        key, cert = self._key_and_cert()
        signature = key.sign(document, padding.PKCS1v15(), hashes.SHA256())

        def p7(detached: bool) -> bytes:
            options = [pkcs7.PKCS7Options.DetachedSignature] if detached else []
            der = (
                pkcs7.PKCS7SignatureBuilder()
                .set_data(document)
                .add_signer(cert, key, hashes.SHA256())
                .sign(serialization.Encoding.DER, options)
            )
            return _wrap(base64.b64encode(der))

        return {
            "signature": _wrap(base64.b64encode(signature)),
            "pkcs7": p7(detached=True),
            "rsa2048": p7(detached=False),
        }


def _log_failure(done: asyncio.Future[None]) -> None:
    if done.cancelled() or done.exception() is None:
        return
    # A signature request will raise the same again (a 500 on that path); everything else serves.
    log.error("identity-signing key not made: %s", done.exception())


def _wrap(data: bytes, width: int = 64) -> bytes:
    return b"\n".join(data[i : i + width] for i in range(0, len(data), width))


def _make_material(key_file: Path | None) -> tuple[Any, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key: Any
    if key_file is not None:
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "metamock instance identity (not AWS)")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    return key, cert
