"""The local node agent: a small kubelet that runs pods' containers as processes on loopback IPs."""
