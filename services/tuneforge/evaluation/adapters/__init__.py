"""Adapters of the evaluation service: SQL repository, object-store reports and datasets, models, peer clients, runners."""
