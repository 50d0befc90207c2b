"""gRPC plumbing shared by every service: server builder, interceptors, client helpers."""
