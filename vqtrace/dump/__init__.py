"""Offline analysis of guest memory snapshots (vqtrace dump)."""
