"""Composition root of the training service: settings -> servicer -> server."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from tuneforge.common.grpc.server import RunningServer, build_server
from tuneforge.common.settings import ServiceSettings
from tuneforge.training.servicer import TrainingServicer
from tuneforge.training.v1 import training_pb2, training_pb2_grpc

SERVICE_NAME = training_pb2.DESCRIPTOR.services_by_name["TrainingService"].full_name


class TrainingSettings(ServiceSettings):
    """Training service settings (TUNEFORGE_*)."""

    model_config = SettingsConfigDict(env_prefix="TUNEFORGE_", extra="forbid", validate_default=True)
    service_name: str = "training"


def build_app(settings: TrainingSettings) -> RunningServer:
    """Start the training service."""
    return build_server(settings, [(training_pb2_grpc.add_TrainingServiceServicer_to_server,
                                    TrainingServicer())], [SERVICE_NAME])
