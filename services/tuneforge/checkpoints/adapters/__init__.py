"""Checkpoint adapters: SQL repository, object-store access and the exporter."""
