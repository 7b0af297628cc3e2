"""Harness module sshd (being written)."""
