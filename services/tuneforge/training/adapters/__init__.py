"""Adapters of the training service: SQL repository, peers, engine runner."""
