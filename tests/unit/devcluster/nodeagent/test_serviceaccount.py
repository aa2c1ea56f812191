"""The pod credential files the node agent writes, and that our operator's and Kopf's logins pick them up."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from chronoshard.devcluster.nodeagent.serviceaccount import (
    KUBECONFIG_FILE,
    credential_files,
    kubeconfig_document,
    refresh_deadline,
    service_account_name,
    should_automount,
)
from chronoshard.devcluster.nodeagent.volumes import read_snapshot, write_atomic
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec


def _ca_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "test-ca")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize(
    ("pod", "account", "expected"),
    [
        ({}, None, True),
        ({}, {}, True),
        ({}, {"automountServiceAccountToken": False}, False),
        ({"automountServiceAccountToken": True}, {"automountServiceAccountToken": False}, True),
        ({"automountServiceAccountToken": False}, {"automountServiceAccountToken": True}, False),
        ({"automountServiceAccountToken": None}, {"automountServiceAccountToken": False}, False),
    ],
)
def test_automount_pod_setting_wins_then_service_account_then_true(pod, account, expected) -> None:
    assert should_automount(pod, account) is expected


def test_service_account_name_defaults_like_admission() -> None:
    assert service_account_name({}) == "default"
    assert service_account_name({"serviceAccountName": "op"}) == "op"
    assert service_account_name({"serviceAccount": "legacy"}) == "legacy"


def test_refresh_at_80_percent_of_lifetime() -> None:
    assert refresh_deadline(100.0, 3600) == pytest.approx(100.0 + 2880)
    assert refresh_deadline(0.0, 10) == pytest.approx(8.0)
    with pytest.raises(ValueError, match="positive"):
        refresh_deadline(0.0, 0)


def test_kubeconfig_document_names_server_ca_token_and_namespace() -> None:
    ca = _ca_pem()
    doc = kubeconfig_document("https://127.0.0.1:6443", ca, "tok.en", "ns1", "system:serviceaccount:ns1:op")
    (ctx,) = doc["contexts"]
    assert doc["current-context"] == ctx["name"]
    assert ctx["context"]["namespace"] == "ns1"
    (cluster,) = doc["clusters"]
    assert cluster["cluster"]["server"] == "https://127.0.0.1:6443"
    assert base64.b64decode(cluster["cluster"]["certificate-authority-data"]) == ca
    (user,) = doc["users"]
    assert user["user"] == {"token": "tok.en"} and ctx["context"]["user"] == user["name"]


def test_credential_files_like_kubelet_plus_kubeconfig(tmp_path: Path) -> None:
    ca = _ca_pem()
    files = credential_files("https://127.0.0.1:1", ca, "secret-token", "ns2", "u")
    assert files["token"] == (b"secret-token", 0o600)
    assert files["ca.crt"] == (ca, 0o644)
    assert files["namespace"] == (b"ns2", 0o644)
    content, mode = files[KUBECONFIG_FILE]
    assert mode == 0o600
    assert yaml.safe_load(content)["users"][0]["user"]["token"] == "secret-token"
    # Materialised with the atomic writer: a refresh swaps all four files at once.
    write_atomic(tmp_path, files)
    write_atomic(tmp_path, credential_files("https://127.0.0.1:1", ca, "renewed", "ns2", "u"))
    snap = read_snapshot(tmp_path)
    assert snap["token"] == b"renewed"
    assert yaml.safe_load(snap[KUBECONFIG_FILE])["users"][0]["user"]["token"] == "renewed"
    assert (tmp_path / KUBECONFIG_FILE).read_bytes() == snap[KUBECONFIG_FILE]


_LOGIN_PROBE = """
import json, logging
import kopf
from kopf._core.intents.piggybacking import login_via_client
from chronoshard.operator import kube
api = kube.api_client()
info = login_via_client(logger=logging.getLogger("t"), settings=kopf.OperatorSettings())
with open(api.configuration.ssl_ca_cert, "rb") as fh:
    ca = fh.read().decode()
print(json.dumps({
    "client_host": api.configuration.host,
    "client_auth": api.configuration.get_api_key_with_prefix("BearerToken")
                   or api.configuration.get_api_key_with_prefix("authorization"),
    "client_ca": ca,
    "kopf_server": info.server, "kopf_token": info.token,
}))
"""


def test_operator_and_kopf_log_in_with_the_kubeconfig_a_process_pod_gets(tmp_path: Path) -> None:
    """A pod process has no KUBERNETES_SERVICE_HOST: in-cluster loading fails and both fall back to $KUBECONFIG."""
    ca = _ca_pem()
    write_atomic(tmp_path, credential_files("https://127.0.0.9:7443", ca, "pod-token", "team-a", "sa"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    env["KUBECONFIG"] = str(tmp_path / KUBECONFIG_FILE)
    out = subprocess.run([sys.executable, "-c", _LOGIN_PROBE], env=env, capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["client_host"] == "https://127.0.0.9:7443"
    assert got["client_auth"] == "Bearer pod-token"
    assert got["client_ca"].encode() == ca
    # Kopf's client login takes server and token (the operator is told its namespaces by arguments).
    assert (got["kopf_server"], got["kopf_token"]) == ("https://127.0.0.9:7443", "pod-token")
