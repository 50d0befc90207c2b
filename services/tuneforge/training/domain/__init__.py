"""The training domain: jobs, validation, request -> engine spec mapping, runs (no grpc/sqlalchemy/ray)."""
