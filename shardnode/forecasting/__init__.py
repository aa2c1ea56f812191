"""Partition growth and load forecasts for the WeavePlan (docs/weaving.md): pure models, no I/O."""
