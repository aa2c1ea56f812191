"""ObjectStore against a real S3 server (SeaweedFS): put/get/list/delete, checksums, errors without credentials."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os

import pytest
from chronoshard.shardnode.shadow.config import ColdSettings
from chronoshard.shardnode.shadow.objectstore import (
    Credentials,
    ObjectNotFound,
    ObjectStore,
    ObjectStoreError,
    load_credentials,
    object_key,
)


def test_put_get_round_trip_keeps_bytes_and_checksum(s3_server):
    store = s3_server.store()
    data = os.urandom(200_000)
    store.put("segments/a.seg", data)
    assert store.get("segments/a.seg") == data
    head = s3_server.client().head_object(Bucket=s3_server.bucket, Key=store.key("segments/a.seg"))
    assert head["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert store.exists("segments/a.seg") and not store.exists("segments/b.seg")


def test_get_refuses_content_that_does_not_match_its_checksum(s3_server):
    store = s3_server.store()
    raw = s3_server.client()
    # Written behind ObjectStore's back: right metadata shape, wrong digest (damage at rest).
    raw.put_object(Bucket=s3_server.bucket, Key=store.key("x"), Body=b"tampered",
                   Metadata={"sha256": hashlib.sha256(b"original").hexdigest()})
    with pytest.raises(ObjectStoreError) as err:
        store.get("x")
    assert err.value.code == "checksum_mismatch"
    raw.put_object(Bucket=s3_server.bucket, Key=store.key("y"), Body=b"no metadata")
    with pytest.raises(ObjectStoreError) as err:
        store.get("y")
    assert err.value.code == "checksum_missing"


def test_server_refuses_a_body_that_does_not_match_the_sent_checksum(s3_server):
    store = s3_server.store()
    wrong = base64.b64encode(hashlib.sha256(b"something else").digest()).decode()
    with pytest.raises(Exception) as err:
        s3_server.client().put_object(Bucket=s3_server.bucket, Key=store.key("z"), Body=b"body",
                                      ChecksumSHA256=wrong)
    assert "BadDigest" in str(err.value) or "XAmzContentChecksumMismatch" in str(err.value) \
        or "InvalidDigest" in str(err.value)
    assert not store.exists("z")


def test_list_is_paginated_in_key_order_and_relative_to_the_prefix(s3_server):
    store = s3_server.store()
    names = [f"segments/{i:04d}.seg" for i in range(25)]
    for n in names:
        store.put(n, n.encode())
    store.put("manifests/000000000001.json", b"{}")
    listed = list(store.list("segments/", page_size=7))
    assert [o.name for o in listed] == names
    assert all(o.size == len(o.name) for o in listed)
    assert [o.name for o in store.list()] == ["manifests/000000000001.json", *names]
    # Another prefix of the same bucket sees none of it.
    assert list(s3_server.store().list()) == []


def test_delete_and_missing_objects(s3_server):
    store = s3_server.store()
    store.put("a", b"1")
    store.delete("a")
    store.delete("a")  # already gone: no error
    with pytest.raises(ObjectNotFound) as err:
        store.get("a")
    assert err.value.code == "NoSuchKey"


def test_put_if_absent_refuses_an_existing_name(s3_server):
    store = s3_server.store()
    store.put("manifests/1", b"first", if_absent=True)
    with pytest.raises(ObjectStoreError) as err:
        store.put("manifests/1", b"second", if_absent=True)
    assert err.value.code in ("PreconditionFailed", "412")
    assert store.get("manifests/1") == b"first"


def test_async_wrappers_run_off_the_loop(s3_server):
    store = s3_server.store()

    async def go() -> tuple[bytes, list[str]]:
        await asyncio.gather(*(store.aput(f"k{i}", bytes([i]) * 10) for i in range(5)))
        data = await store.aget("k3")
        await store.adelete("k0")
        return data, [o.name for o in await store.alist("k")]

    data, names = asyncio.run(go())
    assert data == b"\x03" * 10 and names == ["k1", "k2", "k3", "k4"]


def test_wrong_credentials_fail_without_showing_them(s3_server):
    secret = "S3cr3t-" + os.urandom(8).hex()
    store = ObjectStore(s3_server.settings(), Credentials("AKWRONGKEY123", secret))
    with pytest.raises(ObjectStoreError) as err:
        store.put("a", b"x")
    text = str(err.value)
    assert secret not in text and "AKWRONGKEY123" not in text
    assert err.value.code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied")
    # The right key id with a wrong secret: refused too, and the real secret appears nowhere.
    store = ObjectStore(s3_server.settings(), Credentials(s3_server.credentials.access_key_id, secret))
    with pytest.raises(ObjectStoreError) as err:
        store.get("a")
    assert secret not in str(err.value) and s3_server.credentials.secret_access_key not in str(err.value)


def test_unreachable_endpoint_is_an_object_store_error(s3_server):
    from tests.support.s3 import free_ports

    (port,) = free_ports(1)
    settings = ColdSettings(endpoint=f"http://127.0.0.1:{port}", bucket="b", credentials_dir="/nonexistent")
    store = ObjectStore(settings, s3_server.credentials, timeout_seconds=2, attempts=1)
    with pytest.raises(ObjectStoreError) as err:
        store.get("a")
    assert s3_server.credentials.secret_access_key not in str(err.value)


def test_credentials_from_the_secret_directory(tmp_path, s3_server):
    s3_server.write_credentials(tmp_path / "creds")
    settings = s3_server.settings(credentials_dir=tmp_path / "creds")
    store = ObjectStore(settings)
    store.put("a", b"via files")
    assert store.get("a") == b"via files"
    assert s3_server.credentials.secret_access_key not in repr(load_credentials(tmp_path / "creds"))
    with pytest.raises(ObjectStoreError) as err:
        load_credentials(tmp_path / "missing")
    assert err.value.code == "credentials"
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "accessKeyId").write_text("id")
    (tmp_path / "empty" / "secretAccessKey").write_text("  \n")
    with pytest.raises(ObjectStoreError, match="empty"):
        load_credentials(tmp_path / "empty")


@pytest.mark.parametrize(("prefix", "name", "key"), [
    ("", "a/b", "a/b"), ("ns/set/0", "segments/x", "ns/set/0/segments/x"), ("/p//q/", "/m", "p/q/m"),
])
def test_object_key(prefix, name, key):
    assert object_key(prefix, name) == key


@pytest.mark.parametrize("name", ["", "/", "a/../b", "./a"])
def test_object_key_refuses_bad_names(name):
    with pytest.raises(ObjectStoreError):
        object_key("p", name)
