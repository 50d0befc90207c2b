"""Evaluation domain: specs, metrics, scoring, A/B pairs and use cases (no grpc, sqlalchemy, torch)."""
