"""The MirrorSet controller: health monitor, role documents, failover, switchover, failback, consistency checks."""
