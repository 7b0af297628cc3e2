"""Harness module k8s (being written)."""
