"""ShadowPolicy: the shadow process in every shard pod of a ShardSet, and the policy's status."""
