"""The cold tier's object storage: an S3 bucket (any S3-compatible server) reached with boto3.

Every object carries a SHA-256 of its content, sent as the S3 checksum header (a server that checks it refuses a
body damaged on the way) and kept as user metadata, which ``get`` compares with what it read (so damage at rest or
a server that ignores checksums is still caught). Errors are ``ObjectStoreError`` whose text names the operation,
the object and the S3 error code, never a credential.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from .config import ColdSettings

log = logging.getLogger(__name__)

ACCESS_KEY_FILE = "accessKeyId"
SECRET_KEY_FILE = "secretAccessKey"
CHECKSUM_META = "sha256"  # user metadata key (x-amz-meta-sha256): hex SHA-256 of the content
LIST_PAGE = 1000
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}


class ObjectStoreError(RuntimeError):
    """An object-storage call failed; ``code`` is the S3 error code (or a local one), the text has no credential."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class ObjectNotFound(ObjectStoreError):
    """The named object does not exist."""


@dataclass(frozen=True)
class Credentials:
    """A static access key pair; ``repr`` never shows the secret."""

    access_key_id: str
    secret_access_key: str

    def __repr__(self) -> str:
        return f"Credentials(access_key_id={self.access_key_id[:4]}…)"


@dataclass(frozen=True)
class ObjectInfo:
    """One listed object: its name relative to the store's prefix, its size in bytes and ETag."""

    name: str
    size: int
    etag: str


def load_credentials(directory: Path) -> Credentials:
    """Read ``accessKeyId`` and ``secretAccessKey`` from a mounted Secret directory."""
    values = []
    for name in (ACCESS_KEY_FILE, SECRET_KEY_FILE):
        try:
            value = (Path(directory) / name).read_text().strip()
        except OSError as exc:
            raise ObjectStoreError("credentials", f"cannot read {name} in {directory}: {exc.strerror}") from None
        if not value:
            raise ObjectStoreError("credentials", f"{name} in {directory} is empty")
        values.append(value)
    return Credentials(values[0], values[1])


def object_key(prefix: str, name: str) -> str:
    """The bucket key of ``name`` under ``prefix`` (no leading, trailing or doubled slashes)."""
    own = [p for p in name.split("/") if p]
    parts = [p for p in prefix.split("/") if p] + own
    if not own or any(p in (".", "..") for p in parts):
        raise ObjectStoreError("invalid_name", f"invalid object name {name!r}")
    return "/".join(parts)


def content_checksum(data: bytes) -> bytes:
    """SHA-256 of an object's content (the S3 checksum algorithm every server that checks one supports)."""
    return hashlib.sha256(data).digest()


class ObjectStore:
    """put / get / list / delete of objects under one bucket prefix; blocking (``a*`` methods run in a thread)."""

    def __init__(self, settings: ColdSettings, credentials: Credentials | None = None,
                 *, timeout_seconds: float = 30.0, attempts: int = 3) -> None:
        self.settings = settings
        self.bucket = settings.bucket
        self.prefix = "/".join(p for p in settings.prefix.split("/") if p)
        creds = credentials or load_credentials(Path(settings.credentials_dir))
        self._secrets = (creds.access_key_id, creds.secret_access_key)
        config = Config(
            region_name=settings.region, connect_timeout=timeout_seconds, read_timeout=timeout_seconds,
            retries={"max_attempts": attempts, "mode": "standard"},
            s3={"addressing_style": "path" if settings.force_path_style else "auto"},
            # The checksum is sent as a plain header (below), never as a streaming trailer, which not every
            # S3-compatible server accepts.
            request_checksum_calculation="when_required", response_checksum_validation="when_required",
        )
        self._client: Any = boto3.session.Session().client(
            "s3", endpoint_url=settings.endpoint, aws_access_key_id=creds.access_key_id,
            aws_secret_access_key=creds.secret_access_key, config=config)

    def key(self, name: str) -> str:
        """The full bucket key of a name relative to this store's prefix."""
        return object_key(self.prefix, name)

    # ---- blocking API --------------------------------------------------------------------------
    def put(self, name: str, data: bytes, *, content_type: str = "application/octet-stream",
            if_absent: bool = False) -> str:
        """Store ``data`` under ``name`` with its SHA-256; returns the ETag.

        ``if_absent``: only if no object has that name (S3 ``If-None-Match: *``; code PreconditionFailed otherwise).
        """
        digest = content_checksum(data)
        extra: dict[str, Any] = {"IfNoneMatch": "*"} if if_absent else {}
        reply = self._call("put", name, lambda: self._client.put_object(
            Bucket=self.bucket, Key=self.key(name), Body=data, ContentType=content_type,
            ChecksumSHA256=base64.b64encode(digest).decode(), Metadata={CHECKSUM_META: digest.hex()}, **extra))
        return str(reply.get("ETag", "")).strip('"')

    def get(self, name: str) -> bytes:
        """The content of ``name``, checked against its stored SHA-256; ObjectNotFound if absent."""
        reply = self._call("get", name, lambda: self._client.get_object(Bucket=self.bucket, Key=self.key(name)))
        data = self._call("get", name, lambda: reply["Body"].read())
        expected = (reply.get("Metadata") or {}).get(CHECKSUM_META)
        if expected is None:
            raise ObjectStoreError("checksum_missing", f"object {name!r} has no content checksum; refusing it")
        if content_checksum(data).hex() != expected:
            raise ObjectStoreError("checksum_mismatch", f"object {name!r} does not match its content checksum")
        return bytes(data)

    def exists(self, name: str) -> bool:
        """Whether ``name`` exists."""
        try:
            self._call("head", name, lambda: self._client.head_object(Bucket=self.bucket, Key=self.key(name)))
        except ObjectNotFound:
            return False
        return True

    def list(self, prefix: str = "", *, page_size: int = LIST_PAGE) -> Iterator[ObjectInfo]:
        """Objects whose name starts with ``prefix``, in key order, fetched a page at a time."""
        base = self.prefix + "/" if self.prefix else ""
        full = base + prefix.lstrip("/")
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full, "MaxKeys": page_size}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call("list", prefix or "/", lambda kw=kwargs: self._client.list_objects_v2(**kw))
            for item in page.get("Contents") or []:
                etag = str(item.get("ETag", "")).strip('"')
                yield ObjectInfo(item["Key"][len(base):], int(item.get("Size", 0)), etag)
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    def delete(self, name: str) -> None:
        """Delete ``name`` (no error if it is already gone)."""
        self._call("delete", name, lambda: self._client.delete_object(Bucket=self.bucket, Key=self.key(name)))

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (tests and first use; production buckets are provisioned)."""
        try:
            self._call("head_bucket", "/", lambda: self._client.head_bucket(Bucket=self.bucket))
        except ObjectNotFound:
            self._call("create_bucket", "/", lambda: self._client.create_bucket(Bucket=self.bucket))

    def close(self) -> None:
        """Release the client's connection pool."""
        self._client.close()

    # ---- asyncio wrappers (boto3 blocks: never on the event loop) --------------------------------
    async def aput(self, name: str, data: bytes) -> str:
        """``put`` in a worker thread."""
        return await asyncio.to_thread(self.put, name, data)

    async def aget(self, name: str) -> bytes:
        """``get`` in a worker thread."""
        return await asyncio.to_thread(self.get, name)

    async def alist(self, prefix: str = "") -> builtins.list[ObjectInfo]:
        """``list`` (all pages) in a worker thread."""
        return await asyncio.to_thread(lambda: list(self.list(prefix)))

    async def adelete(self, name: str) -> None:
        """``delete`` in a worker thread."""
        await asyncio.to_thread(self.delete, name)

    # ---- errors --------------------------------------------------------------------------------
    def _call(self, op: str, name: str, fn: Any) -> Any:
        try:
            return fn()
        except ClientError as exc:
            err = exc.response.get("Error") or {}
            code = str(err.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or "error")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            cls = ObjectNotFound if code in _MISSING_CODES or code == "NoSuchBucket" and op.endswith("bucket") \
                else ObjectStoreError
            raise cls(code, self._scrub(f"object storage {op} {name!r} in bucket {self.bucket!r} failed: "
                                        f"{code} (HTTP {status})")) from None
        except BotoCoreError as exc:
            # botocore's own messages name endpoints and parameters, never the key pair; scrubbed anyway.
            raise ObjectStoreError(type(exc).__name__, self._scrub(
                f"object storage {op} {name!r} in bucket {self.bucket!r} failed: {exc}")) from None
        except OSError as exc:
            raise ObjectStoreError("io", self._scrub(f"object storage {op} {name!r} failed: {exc}")) from None

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            if secret:
                text = text.replace(secret, "***")
        return text
