"""The shared ``python -m tuneforge.<service>`` entry: settings -> logging -> app -> serve."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from tuneforge.common.errors import InvalidInput, TuneforgeError
from tuneforge.common.grpc.server import RunningServer
from tuneforge.common.logging import configure_logging
from tuneforge.common.settings import S, load_settings

log = logging.getLogger(__name__)


def run_service(settings_cls: type[S], build_app: Callable[[S], RunningServer]) -> int:
    """Load settings (exit 2 listing every bad one), start the app (exit 1 if start-up checks
    fail), print the address, and serve until SIGTERM/SIGINT, draining in-flight calls."""
    try:
        settings = load_settings(settings_cls)
    except InvalidInput as exc:
        print(f"tuneforge: {exc.message}", file=sys.stderr)
        for v in exc.violations:
            print(f"  - {v.field}: {v.description}", file=sys.stderr)
        return 2
    configure_logging(json_lines=settings.log_json, level=settings.log_level)
    try:
        app = build_app(settings)
    except TuneforgeError as exc:
        log.error("start-up check failed: %s", exc)
        return 1
    print(f"{settings.service_name} listening on {app.address}", flush=True)
    app.serve_forever()
    return 0
