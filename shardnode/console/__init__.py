"""The recovery console: a signed-in browser's view of ShardSets, incidents, history and Reversions (issue #16)."""
