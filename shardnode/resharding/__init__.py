"""Online resharding on a node (docs/resharding.md, issue #19): the target side of a move (the puller, its persisted
state and routes, content digests of keyspace ranges) and the source side (pushed maps, fences, purge, range
stats). A layer between the node (which wires it in) and the serving plumbing, beside replication: it imports no
node module and works on the node's store through a protocol."""
