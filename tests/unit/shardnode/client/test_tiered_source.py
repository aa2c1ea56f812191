"""The tiered token source's pure parts: when to refresh, the Queued answer, nothing of a token in its repr."""

from __future__ import annotations

from chronoshard.shardnode.client.credentials import Credentials, fixed_source
from chronoshard.shardnode.client.tiered import Queued, TieredTokenSource, refresh_at


def test_refresh_before_expiry():
    assert refresh_at(1000, 1600, 0.2) == 1480  # a fifth of 600 s before the end
    assert refresh_at(1000, 1010, 0.2) == 1005  # at least 5 s before
    assert refresh_at(1000, 1002, 0.2) == 1000  # never before it was issued


def test_queued_is_the_json_answer_too():
    q = Queued({"queued": "abc", "position": 3})
    assert (q.id, q.position) == ("abc", 3) and q["queued"] == "abc" and isinstance(q, dict)


def test_repr_never_shows_a_token():
    src = TieredTokenSource("https://tokens.example:7405", Credentials([fixed_source("k8s", "sa-secret")]))
    src._adopt({"token": "tok.en.secret", "tokenId": "t1", "tier": "temporary", "store": "shop/orders",
                "expiresAt": 2e9})
    assert "secret" not in repr(src) and src.status is not None and src.status.tier == "temporary"
    seen = []
    src.on_change.append(seen.append)
    src._adopt({"token": "tok.en.other", "tokenId": "t2", "tier": "valid", "store": "shop/orders",
                "expiresAt": 2e9})
    assert [s.tier for s in seen] == ["valid"]
