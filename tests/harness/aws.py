"""Harness module aws (being written)."""
