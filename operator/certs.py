"""The ShardSet's certificates (pure): its CA, the pods' serving + client certificate, the operator's client
certificate, and when to renew (docs/security.md, "Certificates").

Everything is PEM in, PEM out; ``now`` is always passed in, so the caller (and a test) owns the clock. Keys are
ECDSA P-256. Nothing here logs or formats key material: error messages name certificates, never keys.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .podcontract import OPERATOR_IDENTITY, pod_dns_name, pod_identity

CA_LIFETIME = timedelta(days=3650)
SERVING_LIFETIME = timedelta(days=90)
# The operator's own client certificate lives only in its memory: short, renewed on the same rule.
OPERATOR_LIFETIME = timedelta(days=1)
# Renew when less than this fraction of the lifetime is left.
RENEW_FRACTION = 1 / 3
# Backdate notBefore a little: clocks of the API server, the operator and the pods differ.
CLOCK_SKEW = timedelta(minutes=5)


__all__ = ["OPERATOR_IDENTITY", "KeyPair", "pod_dns_name", "pod_identity"]  # re-exported for callers


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, both PEM."""

    cert: bytes
    key: bytes


def _service_names(service: str, namespace: str) -> list[str]:
    return [service, f"{service}.{namespace}", f"{service}.{namespace}.svc", f"{service}.{namespace}.svc.cluster.local"]


def shard_dns_names(namespace: str, name: str, shards: int) -> list[str]:
    """Every DNS SAN of the pods' certificate: each pod's names, the headless and client Service names,
    ``localhost``."""
    names: list[str] = []
    for i in range(shards):
        pod = pod_dns_name(namespace, name, i)
        names += [pod, f"{pod}.cluster.local"]
    names += _service_names(f"{name}-headless", namespace) + _service_names(name, namespace)
    return [*names, "localhost"]


def shard_ip_addresses(pod_ips: Iterable[str]) -> list[str]:
    """The IP SANs: loopback plus the pod IPs seen (sorted, duplicates and non-IPs dropped)."""
    out = {"127.0.0.1"}
    for ip in pod_ips:
        try:
            out.add(str(ipaddress.ip_address(ip)))
        except ValueError:
            continue
    return sorted(out, key=lambda a: (ipaddress.ip_address(a).version, ipaddress.ip_address(a)))


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "chronoshard"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def new_ca(namespace: str, name: str, now: datetime, lifetime: timedelta = CA_LIFETIME) -> KeyPair:
    """A new CA for one ShardSet (CN ``chronoshard-ca:NAMESPACE:NAME``), self-signed, path length 0."""
    key = _new_key()
    subject = _name(f"chronoshard-ca:{namespace}:{name}")
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def issue(ca: KeyPair, common_name: str, now: datetime, lifetime: timedelta, *,
          dns_names: Sequence[str] = (), ip_addresses: Sequence[str] = (), server: bool = True) -> KeyPair:
    """A leaf certificate signed by ``ca``: clientAuth always, serverAuth too when ``server``; the SANs given."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert)
    ca_key = serialization.load_pem_private_key(ca.key, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key is not an ECDSA key")
    key = _new_key()
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH] if server else [])
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name)).issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, content_commitment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def issue_shard_certificate(ca: KeyPair, namespace: str, name: str, shards: int, pod_ips: Iterable[str],
                            now: datetime, lifetime: timedelta = SERVING_LIFETIME) -> KeyPair:
    """The pods' one serving + client certificate: CN the pod identity, SANs for ``shards`` pods."""
    return issue(ca, pod_identity(namespace, name), now, lifetime,
                 dns_names=shard_dns_names(namespace, name, shards), ip_addresses=shard_ip_addresses(pod_ips))


def issue_operator_certificate(ca: KeyPair, now: datetime, lifetime: timedelta = OPERATOR_LIFETIME) -> KeyPair:
    """The operator's client certificate for one ShardSet's CA (CN ``chronoshard:operator``, clientAuth only)."""
    return issue(ca, OPERATOR_IDENTITY, now, lifetime, server=False)


def certificate_names(cert_pem: bytes) -> tuple[frozenset[str], frozenset[str]]:
    """(DNS names, IP addresses) of a certificate's SANs."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return frozenset(), frozenset()
    return (frozenset(san.get_values_for_type(x509.DNSName)),
            frozenset(str(a) for a in san.get_values_for_type(x509.IPAddress)))


def common_name(cert_pem: bytes) -> str | None:
    """A certificate's subject CN."""
    attrs = x509.load_pem_x509_certificate(cert_pem).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else None


def issued_by(cert_pem: bytes, ca_cert_pem: bytes) -> bool:
    """True when ``ca_cert_pem`` signed ``cert_pem``."""
    try:
        x509.load_pem_x509_certificate(cert_pem).verify_directly_issued_by(
            x509.load_pem_x509_certificate(ca_cert_pem))
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def key_matches(cert_pem: bytes, key_pem: bytes) -> bool:
    """True when ``key_pem`` is the private key of ``cert_pem``."""
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
        cert = x509.load_pem_x509_certificate(cert_pem)
    except (ValueError, TypeError):
        return False
    return bool(key.public_key() == cert.public_key())


def renewal_reason(cert_pem: bytes, now: datetime, dns_names: Iterable[str] | None = None,
                   ip_addresses: Iterable[str] | None = None) -> str | None:
    """Why a certificate must be renewed now (None: keep it): unparseable, less than a third of its lifetime
    left, or its DNS names / IP addresses differ from the ones given (None: not compared)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        return "the certificate does not parse"
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if end - now < (end - start) * RENEW_FRACTION:
        return f"it expires at {end.isoformat()}"
    dns, ips = certificate_names(cert_pem)
    if dns_names is not None and frozenset(dns_names) != dns:
        return "its DNS names changed"
    if ip_addresses is not None and frozenset(ip_addresses) != ips:
        return "its IP addresses changed"
    return None


def needs_renewal(cert_pem: bytes, names: Iterable[str] | None, now: datetime) -> bool:
    """True when less than a third of the certificate's lifetime is left, or its SANs (DNS names and IP
    addresses together) are not exactly ``names`` (None: names not compared)."""
    if renewal_reason(cert_pem, now) is not None:
        return True
    if names is None:
        return False
    dns, ips = certificate_names(cert_pem)
    return frozenset(names) != dns | ips
