"""The shadow store: captured history of every change, tiers, snapshots, time travel and restore."""
