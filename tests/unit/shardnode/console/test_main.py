"""The console's flags: its own ServiceAccount (flag, or the pod's token's subject) and the TLS/--insecure rule."""

from __future__ import annotations

import base64
import json

import pytest
from chronoshard.shardnode.console.main import main, own_service_account
from chronoshard.shardnode.console.shards import ServiceAccountRef


def jwt(claims: dict) -> str:
    def part(doc: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'RS256'})}.{part(claims)}.c2ln"


def test_the_flag_wins_over_the_pods_token(tmp_path):
    token = tmp_path / "token"
    token.write_text(jwt({"sub": "system:serviceaccount:ops:from-token"}))
    assert own_service_account("ops/from-flag", token) == ServiceAccountRef("ops", "from-flag")
    assert own_service_account(None, token) == ServiceAccountRef("ops", "from-token")


def test_without_a_flag_or_a_service_account_token_there_is_none(tmp_path):
    assert own_service_account(None, tmp_path / "absent") is None
    other = tmp_path / "token"
    other.write_text(jwt({"sub": "alice"}))
    assert own_service_account(None, other) is None
    other.write_text("not-a-jwt")
    assert own_service_account(None, other) is None


@pytest.mark.parametrize(("argv", "says"), [
    ([], "--tls-dir"), (["--tls-dir", "/x", "--insecure"], "contradicts")])
def test_plain_http_needs_insecure_and_insecure_contradicts_tls(argv, says, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--service-account", "ops/console", *argv])
    assert exc.value.code == 2 and says in capsys.readouterr().err


def test_the_auth_proxy_needs_tls(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["--service-account", "ops/console", "--insecure", "--auth-proxy-ca", str(tmp_path / "ca.crt")])
    assert exc.value.code == 2 and "--auth-proxy-ca needs --tls-dir" in capsys.readouterr().err
