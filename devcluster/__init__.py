"""Local development cluster: the envtest control plane and the process node agent."""
