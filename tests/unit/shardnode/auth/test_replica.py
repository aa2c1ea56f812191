"""The `replica` identity (a peer MirrorSet member's pod certificate): REPLICATION routes only; and which CA issued
a certificate (auth/peers.py), with real certificates from the operator's own certificate code."""

from __future__ import annotations

import pytest
from chronoshard.shardnode.auth.authorizer import Authorizer
from chronoshard.shardnode.auth.config import parse_security_config
from chronoshard.shardnode.auth.identity import Identity
from chronoshard.shardnode.auth.metrics import AuthMetrics
from chronoshard.shardnode.auth.peers import OwnAuthorities
from chronoshard.shardnode.auth.policy import Access
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from prometheus_client import CollectorRegistry

from tests.support import tls_files
from tests.support.rbac import security_doc
from tests.unit.shardnode.auth.test_route_policies import unreachable_api

PEER = "chronoshard:shardset:shop-b:orders-b"


def authorizer() -> Authorizer:
    cfg = parse_security_config({**security_doc("shop"), "replicaIdentities": [PEER]})
    return Authorizer(cfg, unreachable_api(), AuthMetrics(CollectorRegistry(), "test"))


@pytest.mark.parametrize("access", list(Access))
async def test_a_replica_may_use_the_replication_routes_only(access):
    replica = Identity(PEER, (), "replica", "client-certificate")
    decision = await authorizer().authorize(replica, access, "t")
    # PUBLIC routes need no credential at all; everything else but REPLICATION is refused without any review.
    assert decision.allowed == (access in (Access.REPLICATION, Access.PUBLIC))
    if not decision.allowed:
        assert decision.reason == "replica_only"


async def test_replication_routes_are_the_pods_and_the_operators_never_a_users():
    az = authorizer()
    assert (await az.authorize(Identity("chronoshard:operator", (), "operator", "client-certificate"),
                               Access.REPLICATION, None)).allowed
    assert (await az.authorize(Identity("p", (), "pod", "token"), Access.REPLICATION, None)).allowed
    # A service account is refused without a review (the API server here is unreachable: a review would be 503).
    user = await az.authorize(Identity("system:serviceaccount:shop:app", (), "serviceaccount", "token"),
                              Access.REPLICATION, None)
    assert not user.allowed and user.reason == "admin_only"


def der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)


def test_own_authorities_tell_own_certificates_from_a_peers():
    own_ca, peer_ca = tls_files.new_ca("orders"), tls_files.new_ca("orders-b")
    own = OwnAuthorities()
    own.add_pem(own_ca.cert)
    mine, theirs = tls_files.shard_pair(own_ca), tls_files.shard_pair(peer_ca, name="orders-b")
    assert own.issued(der(mine.cert)) and not own.issued(der(theirs.cert))
    assert not own.issued(der(theirs.cert))  # the remembered verdict is the same
    # A CA added later (the ShardSet's CA replaced): its certificates are own ones from then on.
    own.add_pem(peer_ca.cert + own_ca.cert)
    assert own.issued(der(theirs.cert)) and len(own.cas) == 2


async def test_authenticated_routes_take_any_known_caller_but_not_a_replica_or_unknown_certificate():
    az = authorizer()
    sa = Identity("system:serviceaccount:shop:app", (), "serviceaccount", "token")
    assert (await az.authorize(sa, Access.AUTHENTICATED, None)).reason == "authenticated"
    assert not (await az.authorize(Identity(PEER, (), "replica", "client-certificate"),
                                   Access.AUTHENTICATED, None)).allowed
    stranger = Identity("someone", (), "user", "client-certificate")
    assert (await az.authorize(stranger, Access.AUTHENTICATED, None)).reason == "unknown_certificate"
