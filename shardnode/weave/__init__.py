"""The weaver process (docs/weaving.md): partition metadata over time, woven snapshots, their query API."""
