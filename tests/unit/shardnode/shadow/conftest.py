"""The shadow tests' fixtures: one real S3 server (SeaweedFS) for the session, for the object-storage tests."""

from tests.support.s3 import s3_server

__all__ = ["s3_server"]
