"""Replication between the nodes of a MirrorSet's ShardSets (docs/mirroring.md): the role document and its
transitions (role.py), the persisted and in-memory state (state.py), the mirror's replicator (replicator.py) with
its SQL (apply.py), rewind (rewind.py), digest at an LSN (digest.py) and repair (repair.py), and the routes
(api.py). A layer between the node (which wires it in) and the serving plumbing: it imports no node module and
works on the node's store through ``state.StoreLike``."""
