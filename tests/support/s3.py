"""A real S3 server for tests: SeaweedFS (`weed server` with its S3 gateway) on 127.0.0.1.

The binary comes from ``CHRONOSHARD_S3_BIN`` (set by hack/test.sh from ``hack/s3.sh``), else ``hack/s3.sh`` is run
(it builds once, then answers from its cache). Every port is a free loopback port picked at start, the data lives in
a temporary directory, and the S3 gateway has one static identity (``S3Server.credentials``).

Use the session fixture ``s3_server`` (import it into a conftest: ``from tests.support.s3 import s3_server``) and
``S3Server.store(prefix)`` for an ``ObjectStore`` on a fresh prefix of the test bucket.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from chronoshard.shardnode.shadow.config import ColdSettings
from chronoshard.shardnode.shadow.objectstore import Credentials, ObjectStore

from tests.support.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
BUCKET = "chronoshard-test"
START_TIMEOUT = 120.0


def weed_binary() -> Path:
    """The `weed` binary: $CHRONOSHARD_S3_BIN, else whatever hack/s3.sh builds or has cached."""
    env = os.environ.get("CHRONOSHARD_S3_BIN")
    if env:
        return Path(env)
    out = subprocess.run(["bash", str(REPO / "hack" / "s3.sh")], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (held open together while picking, so none repeats)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def identity_config(creds: Credentials) -> dict[str, object]:
    """SeaweedFS's S3 identity file: one identity with the static key pair, allowed everything."""
    return {"identities": [{"name": "chronoshard-test",
                            "credentials": [{"accessKey": creds.access_key_id, "secretKey": creds.secret_access_key}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}


@dataclass
class S3Server:
    """A running SeaweedFS with its S3 gateway; ``endpoint`` is its S3 URL."""

    binary: Path
    root: Path
    credentials: Credentials = field(default_factory=lambda: Credentials(
        "CS" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30)))
    bucket: str = BUCKET
    endpoint: str = ""
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start `weed server` (master, volume, filer, S3) on free loopback ports and wait until S3 answers."""
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.root / "s3.json"
        config.write_text(json.dumps(identity_config(self.credentials)))
        config.chmod(0o600)
        ports = free_ports(8)
        self.endpoint = f"http://127.0.0.1:{ports[6]}"
        args = [
            str(self.binary), "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={ports[0]}", f"-master.port.grpc={ports[1]}",
            f"-volume.port={ports[2]}", f"-volume.port.grpc={ports[3]}",
            "-filer", f"-filer.port={ports[4]}", f"-filer.port.grpc={ports[5]}",
            "-s3", f"-s3.port={ports[6]}", f"-s3.port.grpc={ports[7]}", f"-s3.config={config}",
            # Nothing else listens, and nothing leaves the machine (the master reports usage by default).
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.iam=false", "-master.telemetry=false",
            # Small volumes so a test's data dir stays small; 0 = as many as the disk allows.
            "-master.volumeSizeLimitMB=64", "-volume.max=0",
        ]
        log = (self.root / "weed.log").open("wb")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.root,
                                        start_new_session=True)
        log.close()
        wait_for(self._bucket_ready, START_TIMEOUT, interval=0.25, what=f"SeaweedFS S3 at {self.endpoint}")

    def client(self) -> object:
        """A plain boto3 S3 client with the server's credentials (for checks beside ObjectStore)."""
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=self.credentials.access_key_id,
                            aws_secret_access_key=self.credentials.secret_access_key,
                            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                                          request_checksum_calculation="when_required",
                                          response_checksum_validation="when_required"))

    def _bucket_ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            tail = (self.root / "weed.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"weed exited with {self.process.returncode}:\n{tail}")
        # The gateway answers before the filer and volume server are ready: ready means a bucket was created
        # and an object written and read back.
        try:
            c = self.client()
            try:
                c.head_bucket(Bucket=self.bucket)  # type: ignore[attr-defined]
            except Exception:
                c.create_bucket(Bucket=self.bucket)  # type: ignore[attr-defined]
            c.put_object(Bucket=self.bucket, Key=".ready", Body=b"ok")  # type: ignore[attr-defined]
            body = c.get_object(Bucket=self.bucket, Key=".ready")["Body"].read()  # type: ignore[attr-defined]
            c.delete_object(Bucket=self.bucket, Key=".ready")  # type: ignore[attr-defined]
            return bool(body == b"ok")
        except Exception:
            return False

    def settings(self, prefix: str | None = None, credentials_dir: Path | None = None) -> ColdSettings:
        """Cold-tier settings for this server's bucket under ``prefix`` (default: a fresh one)."""
        return ColdSettings(endpoint=self.endpoint, bucket=self.bucket, prefix=prefix or f"t/{uuid.uuid4().hex[:12]}",
                            region="us-east-1", force_path_style=True,
                            credentials_dir=str(credentials_dir or self.root / "credentials"))

    def write_credentials(self, directory: Path) -> Path:
        """Write the key pair as the Secret's files (accessKeyId, secretAccessKey) into ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "accessKeyId").write_text(self.credentials.access_key_id)
        (directory / "secretAccessKey").write_text(self.credentials.secret_access_key)
        return directory

    def store(self, prefix: str | None = None) -> ObjectStore:
        """An ObjectStore on this server's bucket under ``prefix`` (default: a fresh prefix per call)."""
        return ObjectStore(self.settings(prefix), self.credentials)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL if it does not exit)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=20)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One SeaweedFS S3 server for the test session, with the bucket ``chronoshard-test`` created."""
    root = Path(tempfile.mkdtemp(prefix="chronoshard-s3-"))
    server = S3Server(binary=weed_binary(), root=root)
    server.write_credentials(root / "credentials")
    try:
        server.start()
        yield server
    finally:
        server.stop()
        if not os.environ.get("CHRONOSHARD_KEEP_S3"):
            shutil.rmtree(root, ignore_errors=True)
