"""Composition root of the training service: settings -> servicer -> server."""

from __future__ import annotations

from tuneforge.common.grpc.server import RunningServer, build_server
from tuneforge.training.servicer import TrainingServicer
from tuneforge.training.settings import TrainingSettings
from tuneforge.training.v1 import training_pb2, training_pb2_grpc

__all__ = ["SERVICE_NAME", "TrainingSettings", "build_app"]

SERVICE_NAME = training_pb2.DESCRIPTOR.services_by_name["TrainingService"].full_name


def build_app(settings: TrainingSettings) -> RunningServer:
    """Start the training service."""
    return build_server(settings, [(training_pb2_grpc.add_TrainingServiceServicer_to_server,
                                    TrainingServicer())], [SERVICE_NAME])
