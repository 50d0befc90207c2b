"""gRPC helpers for the end-to-end tests: a service's health and its methods by reflection."""

from __future__ import annotations

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

INFRA_SERVICES = {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}


def health(addr: str, service: str = "", timeout_s: float = 10) -> str:
    """The grpc.health.v1 status name of ``service`` ('' = the server) at ``addr``."""
    with grpc.insecure_channel(addr) as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service),
                                                    timeout=timeout_s)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)


def list_methods(addr: str) -> dict[str, list[str]]:
    """Services and their methods, as server reflection at ``addr`` describes them (no auth needed)."""
    with grpc.insecure_channel(addr) as ch:
        db = ProtoReflectionDescriptorDatabase(ch)
        pool = descriptor_pool.DescriptorPool(db)
        return {name: sorted(m.name for m in pool.FindServiceByName(name).methods)
                for name in db.get_services() if name not in INFRA_SERVICES}
