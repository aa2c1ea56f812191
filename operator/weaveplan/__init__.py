"""The WeavePlan controller (docs/weaving.md)."""
