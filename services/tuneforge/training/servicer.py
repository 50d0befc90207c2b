"""TrainingService servicer.

The engine (``tuneforge.engine``) is complete as a library; the orchestration service that turns
API jobs into engine runs lands with its own issue. Until then every RPC answers UNIMPLEMENTED with
a message that says what to use meanwhile.
"""

from __future__ import annotations

from typing import Any, NoReturn

from tuneforge.common.errors import Unimplemented
from tuneforge.training.v1 import training_pb2_grpc

_HINT = ("is not implemented yet: the training orchestration service lands with its own issue; "
         "run jobs meanwhile with `python -m tuneforge.engine --config job.yaml`")


def _unimplemented(rpc: str) -> NoReturn:
    raise Unimplemented(f"TrainingService.{rpc} {_HINT}")


class TrainingServicer(training_pb2_grpc.TrainingServiceServicer):
    """Answers UNIMPLEMENTED for every RPC (see module docstring)."""

    def CreateJob(self, request: Any, context: Any) -> Any:
        """Creates a fine-tuning job (not implemented yet)."""
        _unimplemented("CreateJob")

    def GetJob(self, request: Any, context: Any) -> Any:
        """Returns one job (not implemented yet)."""
        _unimplemented("GetJob")

    def ListJobs(self, request: Any, context: Any) -> Any:
        """Lists jobs (not implemented yet)."""
        _unimplemented("ListJobs")

    def CancelJob(self, request: Any, context: Any) -> Any:
        """Cancels a job (not implemented yet)."""
        _unimplemented("CancelJob")

    def StreamJobEvents(self, request: Any, context: Any) -> Any:
        """Streams a job's events (not implemented yet)."""
        _unimplemented("StreamJobEvents")

    def ListJobCheckpoints(self, request: Any, context: Any) -> Any:
        """Lists a job's checkpoints (not implemented yet)."""
        _unimplemented("ListJobCheckpoints")
