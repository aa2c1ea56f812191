"""The ShardSet custom resource: manifests, status and controller."""
