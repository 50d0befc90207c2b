"""``python -m tuneforge.evaluation``: run the evaluation service alone."""

import sys

from tuneforge.common.grpc.main import run_service
from tuneforge.evaluation.app import build_app
from tuneforge.evaluation.settings import EvaluationSettings

if __name__ == "__main__":
    sys.exit(run_service(EvaluationSettings, build_app))
