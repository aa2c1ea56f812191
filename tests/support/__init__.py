"""Helpers shared by the unit, integration, e2e and bench tests (no tests here, so nothing mirrors code)."""
