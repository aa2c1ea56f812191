"""Reversion: a planned, approved restore of keys, a range or a table to a point in time."""
