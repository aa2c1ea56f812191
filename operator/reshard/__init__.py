"""The Reshard controller: online partition split, move and merge of a ShardSet (docs/resharding.md)."""
