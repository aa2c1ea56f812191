"""Predictive prefetching: access log -> features -> scores -> prefetch hints (pure parts + the engine)."""
