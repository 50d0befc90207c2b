"""``python -m tuneforge.cli`` / ``tuneforge``: the user's command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the chosen command."""
    parser = argparse.ArgumentParser(prog="tuneforge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    st = sub.add_parser("stack", help="run the four services locally (make up)")
    st.add_argument("--base-port", type=int, default=50051, help="first port; the services take 4 in a row")
    st.add_argument("--run-dir", type=Path, default=Path(".run"))
    demo = sub.add_parser("demo", help="the main job end to end on one machine (make demo)")
    demo.add_argument("--run-dir", type=Path, default=Path(".run/demo"))
    demo.add_argument("--tiny", action="store_true", help="a tiny model built on the fly instead of SmolLM2")
    demo.add_argument("--steps", type=int, default=24, help="LoRA optimizer steps")
    args = parser.parse_args(argv)
    if args.command == "stack":
        from tuneforge.cli.stack import run
        return run(args.base_port, args.run_dir)
    from tuneforge.cli.demo import run_demo
    return run_demo(args.run_dir, tiny=args.tiny, steps=args.steps)


if __name__ == "__main__":
    sys.exit(main())
