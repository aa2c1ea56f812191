"""Who is calling a shard-pod server, and may it do this: authenticators, the authorizer, the middleware."""
