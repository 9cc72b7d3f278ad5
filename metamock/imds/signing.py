"""Signatures for dynamic/instance-identity/{signature,pkcs7,rsa2048}.

Signed with a key generated per process (or loaded from a PEM file). Clients that only parse the
document are happy; nothing signed here verifies against AWS's public certificates, by design.
RSA key generation takes 50-300 ms of CPU, and loading the cryptography library ~9 MB of memory.
Neither is paid unless a client asks for a signature: the signatures are lazy leaves of the tree,
and the IMDS handler renders a lazy leaf's first answer in a thread (`Node.render`), so the key is
made off the event loop while other requests are served. (On the loop, at the first signature
request, it stalled every request in flight; made at every start in a thread, it cost ~100 ms of
time to ready on one CPU, ~9 MB of RSS and CPU for a key most tasks never use — both measured
with bench/run.py.)
"""

from __future__ import annotations

import base64
import datetime
import threading
from pathlib import Path
from typing import Any


class IdentitySigner:
    def __init__(self, key_file: Path | None = None) -> None:
        self._key_file = key_file
        self._lock = threading.Lock()
        self._material: tuple[Any, Any] | None = None

    def __repr__(self) -> str:
        return "IdentitySigner(key=****)"

    @property
    def prepared(self) -> bool:
        """Whether the key and certificate exist (signing will not generate them)."""
        return self._material is not None

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
