"""``python -m tuneforge.checkpoints``: run the checkpoint service alone."""

import sys

from tuneforge.checkpoints.app import CheckpointSettings, build_app
from tuneforge.common.grpc.main import run_service

if __name__ == "__main__":
    sys.exit(run_service(CheckpointSettings, build_app))
