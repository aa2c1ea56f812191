"""The pure parts of ``chronoshard token``/``risk`` (shardnode/client/cli_tiered.py)."""

from __future__ import annotations

import pytest
from chronoshard.shardnode.client import cli
from chronoshard.shardnode.client.cli_tiered import render_risk, render_token, request_body, risk_rows, when


def parse(*argv: str):
    return cli.parser().parse_args(list(argv))


def test_request_body_from_flags():
    assert request_body(parse("token", "request")) == {}
    args = parse("token", "request", "--service-id", "svc", "--block", "t/k", "--table", "t", "--verbs", "get, list")
    assert request_body(args) == {"serviceId": "svc", "dataBlockId": "t/k", "table": "t", "verbs": ["get", "list"]}
    with pytest.raises(ValueError):
        request_body(parse("token", "request", "--block", "nokey"))


def test_rendering_never_prints_the_token():
    body = {"token": "aaa.bbb.ccc", "tokenId": "t1", "tier": "provisional", "store": "dr/orders",
            "expiresAt": 0, "lsn": {"0": 42}, "risk": {"900": 0.5, "300": 0.25}}
    text = render_token(body)
    assert "aaa.bbb.ccc" not in text and "provisional on dr/orders" in text and "1970-01-01T00:00:00Z" in text
    assert '{"0": 42}' in text and "5m=0.25 15m=0.50" in text
    assert when(None) == "-" and when(True) == "-"


def test_risk_rows_members_then_copies():
    doc = {"threshold": 0.7, "activeStore": "shop/orders", "model": {"trained": False, "source": "rules"},
           "members": [{"store": "shop/orders", "risk": {"300": 0.9}, "source": "rules", "drivers": ["latency"],
                        "copies": [{"copy": "shop/orders#0", "risk": {"300": 0.9}, "source": "rules"}]}, "junk"]}
    assert risk_rows(doc) == [["shop/orders", "5m=0.90", "rules", "latency"],
                              ["  shop/orders#0", "5m=0.90", "rules", "-"]]
    assert "threshold 0.7" in render_risk(doc, cli.format_table)
