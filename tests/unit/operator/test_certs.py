"""The ShardSet's certificates, built and checked with real ``cryptography`` objects."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from chronoshard.operator import certs
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def ca() -> certs.KeyPair:
    return certs.new_ca("shop", "orders", NOW)


def _load(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def test_ca_is_a_p256_ca_for_ten_years(ca: certs.KeyPair):
    cert = _load(ca.cert)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert cert.not_valid_after_utc - NOW == certs.CA_LIFETIME
    assert certs.issued_by(ca.cert, ca.cert) and certs.key_matches(ca.cert, ca.key)
    assert certs.common_name(ca.cert) == "chronoshard-ca:shop:orders"


def test_shard_certificate_names_usages_and_issuer(ca: certs.KeyPair):
    pair = certs.issue_shard_certificate(ca, "shop", "orders", 3, ["10.0.0.7", "10.0.0.5", "bogus"], NOW)
    cert = _load(pair.cert)
    assert certs.common_name(pair.cert) == "chronoshard:shardset:shop:orders"
    dns, ips = certs.certificate_names(pair.cert)
    for i in range(3):
        assert f"orders-{i}.orders-headless.shop.svc" in dns
        assert f"orders-{i}.orders-headless.shop.svc.cluster.local" in dns
    assert "orders-3.orders-headless.shop.svc" not in dns
    for svc in ("orders", "orders-headless"):
        assert {svc, f"{svc}.shop", f"{svc}.shop.svc", f"{svc}.shop.svc.cluster.local"} <= dns
    assert "localhost" in dns and len(dns) == 3 * 2 + 8 + 1
    assert ips == {"127.0.0.1", "10.0.0.5", "10.0.0.7"}
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert cert.not_valid_after_utc - NOW == certs.SERVING_LIFETIME
    assert cert.not_valid_before_utc < NOW  # backdated for clock skew
    assert certs.issued_by(pair.cert, ca.cert) and certs.key_matches(pair.cert, pair.key)
    other = certs.new_ca("shop", "other", NOW)
    assert not certs.issued_by(pair.cert, other.cert)
    assert not certs.key_matches(pair.cert, other.key)


def test_operator_certificate_is_client_only(ca: certs.KeyPair):
    pair = certs.issue_operator_certificate(ca, NOW)
    cert = _load(pair.cert)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == certs.OPERATOR_IDENTITY
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == \
        [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert certs.certificate_names(pair.cert) == (frozenset(), frozenset())
    assert certs.issued_by(pair.cert, ca.cert)


def test_needs_renewal_after_two_thirds_of_the_lifetime(ca: certs.KeyPair):
    pair = certs.issue_shard_certificate(ca, "shop", "orders", 1, [], NOW)
    names = set(certs.shard_dns_names("shop", "orders", 1)) | {"127.0.0.1"}
    lifetime = certs.SERVING_LIFETIME + certs.CLOCK_SKEW
    start = NOW - certs.CLOCK_SKEW
    assert not certs.needs_renewal(pair.cert, names, NOW)
    assert not certs.needs_renewal(pair.cert, names, start + lifetime * 2 / 3 - timedelta(minutes=1))
    assert certs.needs_renewal(pair.cert, names, start + lifetime * 2 / 3 + timedelta(minutes=1))
    assert certs.needs_renewal(pair.cert, None, NOW + timedelta(days=200))
    assert "expires" in (certs.renewal_reason(pair.cert, NOW + timedelta(days=80)) or "")


def test_needs_renewal_when_names_change(ca: certs.KeyPair):
    pair = certs.issue_shard_certificate(ca, "shop", "orders", 2, ["10.0.0.1"], NOW)
    dns2 = certs.shard_dns_names("shop", "orders", 2)
    assert not certs.needs_renewal(pair.cert, {*dns2, "127.0.0.1", "10.0.0.1"}, NOW)
    assert certs.needs_renewal(pair.cert, {*certs.shard_dns_names("shop", "orders", 3), "127.0.0.1", "10.0.0.1"},
                               NOW)
    assert certs.needs_renewal(pair.cert, {*dns2, "127.0.0.1"}, NOW)  # a pod IP went away
    assert not certs.needs_renewal(pair.cert, None, NOW)
    assert certs.renewal_reason(pair.cert, NOW, dns_names=certs.shard_dns_names("shop", "orders", 1)) == \
        "its DNS names changed"
    assert certs.renewal_reason(pair.cert, NOW, ip_addresses=["127.0.0.1", "10.0.0.2"]) == \
        "its IP addresses changed"
    assert certs.renewal_reason(b"garbage", NOW) == "the certificate does not parse"
    assert certs.needs_renewal(b"garbage", None, NOW)


def test_ip_addresses_are_normalised_and_sorted():
    assert certs.shard_ip_addresses(["10.0.0.10", "10.0.0.9", "10.0.0.9", "fd00::1", ""]) == \
        ["10.0.0.9", "10.0.0.10", "127.0.0.1", "fd00::1"]
