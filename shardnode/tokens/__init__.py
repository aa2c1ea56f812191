"""The token service (docs/tokens.md): issues, registers, refreshes and revokes tiered access tokens."""
