"""Harness module tools (being written)."""
