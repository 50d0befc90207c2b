"""``python -m tuneforge.engine --config job.yaml``: run one training job, metrics as JSON lines.

``--dry-run`` only validates the spec and prints it resolved (the defaults it would train with).

Each event is printed to stdout as one JSON object per line; the final result is the last line
(``{"kind": "result", ...}``). Exit status: 0 completed or early-stopped, 1 engine error (message
on stderr), 130 cancelled by Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from tuneforge.common.errors import TuneforgeError
from tuneforge.engine.api import ReporterConfig, ReporterKind, WandbMode, run_training
from tuneforge.engine.spec import TrainingSpec, load_spec
from tuneforge.engine.train.events import EngineEvent, RunStatus


def _print_event(event: EngineEvent) -> None:
    print(event.to_json(), flush=True)


def _reporters(args: argparse.Namespace, spec: TrainingSpec) -> list[ReporterConfig]:
    """``--report-to`` plus the spec's ``reporting.integrations`` (one format for both doors). Here, on
    one machine, an integration's ``secret`` is the service's business: each tool reads its credentials
    from this environment (WANDB_API_KEY, MLFLOW_TRACKING_URI) as it always does."""
    run_name = spec.output.run_name
    kinds = [ReporterKind(k) for k in args.report_to]
    out = [ReporterConfig(kind, run_name, log_dir=args.report_dir, tracking_uri=args.mlflow_tracking_uri,
                          wandb_mode=WandbMode(args.wandb_mode)) for kind in kinds]
    for integ in spec.reporting.integrations:
        kind = ReporterKind(integ.kind.value)
        if kind not in kinds:
            out.append(ReporterConfig(kind, integ.run_name or run_name, log_dir=args.report_dir or Path("runs"),
                                      tracking_uri=args.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", ""),
                                      project=integ.project, wandb_mode=WandbMode(args.wandb_mode)))
    return out


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tuneforge.engine", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path, help="training spec (YAML)")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate the spec, print it resolved (every default filled in) as JSON, and exit")
    parser.add_argument("--log-level", default="WARNING", help="python logging level for stderr")
    parser.add_argument("--report-to", action="append", default=[], choices=[k.value for k in ReporterKind],
                        help="also report metrics to this tool (repeatable; none by default)")
    parser.add_argument("--report-dir", type=Path, help="folder for TensorBoard / W&B / MLflow files (the spec's "
                        "reporting.integrations default to ./runs)")
    parser.add_argument("--mlflow-tracking-uri", default="", help="MLflow tracking URI (default: report dir)")
    parser.add_argument("--wandb-mode", default=WandbMode.OFFLINE.value, choices=[m.value for m in WandbMode])
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the job, print events; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    cancel = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: cancel.set())
    try:
        spec = load_spec(args.config)
        if args.dry_run:
            print(json.dumps(spec.resolved_dict(), sort_keys=True), flush=True)
            return 0
        result = run_training(spec, on_event=_print_event, cancel=cancel,
                              reporters=_reporters(args, spec))
    except TuneforgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, previous)
    doc = {
        "kind": "result",
        "status": result.status.value,
        "steps": result.steps,
        "metrics": result.metrics,
        "last_checkpoint_uri": result.last_checkpoint_uri,
        "best_checkpoint_uri": result.best_checkpoint_uri,
        "resumed_from_uri": result.resumed_from_uri,
    }
    print(json.dumps(doc, sort_keys=True), flush=True)
    return 130 if result.status is RunStatus.CANCELLED else 0


if __name__ == "__main__":
    sys.exit(main())
