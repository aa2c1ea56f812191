"""Parsed, validated models of the chronoshard custom resources' specs (one module per kind)."""
