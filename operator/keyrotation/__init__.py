"""The KeyRotation custom resource: the Temporal Key Manager of seed 000."""
