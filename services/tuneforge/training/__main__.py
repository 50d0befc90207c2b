"""``python -m tuneforge.training``: run the training service alone."""

import sys

from tuneforge.common.grpc.main import run_service
from tuneforge.training.app import TrainingSettings, build_app

if __name__ == "__main__":
    sys.exit(run_service(TrainingSettings, build_app))
