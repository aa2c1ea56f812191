"""Which CA issued a client certificate: the ShardSet's own, or a peer MirrorSet member's (docs/security.md,
"Replication peers").

A server that also trusts peer CAs (``peers-ca.crt``) verifies a peer's certificate in the handshake like its own
pods'; only the issuer tells them apart. ``OwnAuthorities`` holds the own CA certificates (every one loaded so
far: like the trust store, a reload adds and never removes); serving/tls.py fills it and keeps it in the app
under ``OWN_CAS``, and the client-certificate authenticator asks it before a CN may name the pods or the operator.
"""

from __future__ import annotations

import hashlib

from aiohttp import web
from cryptography import x509
from cryptography.exceptions import InvalidSignature

MAX_REMEMBERED = 4096  # verdicts kept per certificate digest: a signature check per request would cost ~0.1 ms


class OwnAuthorities:
    """The ShardSet's own CA certificates and whether a (verified) client certificate was issued by one."""

    def __init__(self) -> None:
        self.cas: list[x509.Certificate] = []
        self._verdicts: dict[bytes, bool] = {}

    def add_pem(self, pem: bytes) -> None:
        """Add the CA certificates of a PEM bundle (ones already held are skipped)."""
        for ca in x509.load_pem_x509_certificates(pem):
            if ca not in self.cas:
                self.cas.append(ca)
                self._verdicts.clear()  # a "not ours" verdict may change with a new CA

    def issued(self, der: bytes) -> bool:
        """True if one of the own CAs signed this DER certificate directly (the pods' and operator's are)."""
        digest = hashlib.sha256(der).digest()
        known = self._verdicts.get(digest)
        if known is not None:
            return known
        cert = x509.load_der_x509_certificate(der)
        verdict = any(self._signed_by(cert, ca) for ca in self.cas)
        if len(self._verdicts) >= MAX_REMEMBERED:
            self._verdicts.clear()
        self._verdicts[digest] = verdict
        return verdict

    @staticmethod
    def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True


OWN_CAS = web.AppKey("chronoshard_own_cas", OwnAuthorities)
