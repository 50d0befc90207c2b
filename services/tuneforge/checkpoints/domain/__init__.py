"""Checkpoint domain: manifests, aliases, retention, use cases (no grpc, sqlalchemy, minio, ray)."""
