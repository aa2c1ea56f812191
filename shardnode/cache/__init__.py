"""The decryption cache: eviction policies, the block cache, the access log and its HTTP server."""
