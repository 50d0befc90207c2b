"""``python -m tuneforge.datasets``: run the dataset service alone."""

import sys

from tuneforge.common.grpc.main import run_service
from tuneforge.datasets.app import DatasetSettings, build_app

if __name__ == "__main__":
    sys.exit(run_service(DatasetSettings, build_app))
