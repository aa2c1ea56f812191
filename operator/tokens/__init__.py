"""The token service's controller (docs/tokens.md, "The operator"): per MirrorSet, its signing key, TLS, RBAC,
configuration, StatefulSet and Service, and the public keys every member's pods verify tokens with."""
