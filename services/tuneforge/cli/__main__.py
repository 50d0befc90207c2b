"""``tuneforge`` (``python -m tuneforge.cli``): the command line for the whole platform.

Where the services are and the token come from the environment or a profile (see
``tuneforge.client.config``); ``--output table|json|yaml`` works on every command (the JSON shape
is documented in CLI.md); ``tuneforge --install-completion`` installs shell completion.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import typer

from tuneforge.cli import ckpt, datasets, evals, jobs
from tuneforge.cli._output import Output, emit, err, kv, render_error
from tuneforge.cli._state import State, state
from tuneforge.client import ConfigError
from tuneforge.client.config import DEFAULT_CONFIG_FILE
from tuneforge.client.errors import ApiError

HELP = ("The command line of the tuneforge fine-tuning platform: datasets, jobs, evaluations, checkpoints.\n\n"
        "Addresses and token come from TUNEFORGE_ADDRESS or TUNEFORGE_<SERVICE>_ADDRESS, TUNEFORGE_TOKEN, or a "
        "profile (`tuneforge config show`); `--output json` is stable (CLI.md).")
app = typer.Typer(name="tuneforge", help=HELP, no_args_is_help=True, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]})
app.add_typer(datasets.app, name="datasets")
app.add_typer(jobs.app, name="jobs")
app.add_typer(evals.app, name="eval")
app.add_typer(ckpt.app, name="ckpt")
config_app = typer.Typer(help="Client configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@app.callback()
def root(ctx: typer.Context,
         output: Output = typer.Option(Output.table, "--output", "-o", envvar="TUNEFORGE_OUTPUT",
                                       help="table for people; json or yaml for scripts (stable, see CLI.md)"),
         address: str = typer.Option(None, "--address", help="one host:port for every service (else "
                                     "TUNEFORGE_ADDRESS / TUNEFORGE_<SERVICE>_ADDRESS / the profile)"),
         profile: str = typer.Option(None, "--profile", help="profile in ~/.config/tuneforge/config.yaml"),
         tls: bool = typer.Option(None, "--tls/--no-tls", help="TLS to the services (default: env/profile)"),
         ca_file: Path = typer.Option(None, "--ca-file", help="CA bundle for TLS"),
         token_file: Path = typer.Option(None, "--token-file", help="read the token from this file (else "
                                         "TUNEFORGE_TOKEN / the profile); never pass a token itself"),
         timeout: float = typer.Option(None, "--timeout", help="default deadline per call, seconds")) -> None:
    """Command-line client of the tuneforge fine-tuning platform."""
    ctx.obj = State(output, address, profile, tls, ca_file, token_file, timeout)
    ctx.call_on_close(ctx.obj.close)


@config_app.command("show")
def config_show(ctx: typer.Context) -> None:
    """Show the addresses, TLS and token source in use (the token itself is never printed)."""
    st = state(ctx)
    cfg = st.config().describe()
    kv(st.output, cfg, [(k, v) for k, v in cfg.items()])


@config_app.command("set-profile")
def config_set_profile(ctx: typer.Context, name: str,
                       address: str = typer.Option(None, help="one host:port for every service"),
                       base_port: int = typer.Option(None, help="a local stack's first port (4 in a row)"),
                       tls: bool = typer.Option(False, "--tls/--no-tls"),
                       ca_file: Path = typer.Option(None, "--ca-file"),
                       token_file: Path = typer.Option(None, "--token-file", help="where the token is kept"),
                       token_stdin: bool = typer.Option(False, "--token-stdin", help="read the token from stdin and "
                                                        "keep it in a 0600 file beside the config"),
                       default: bool = typer.Option(False, "--default", help="make it the default profile")) -> None:
    """Write a profile to the config file (TUNEFORGE_CONFIG or ~/.config/tuneforge/config.yaml)."""
    import os

    import yaml

    path = Path(os.environ.get("TUNEFORGE_CONFIG") or DEFAULT_CONFIG_FILE).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = (yaml.safe_load(path.read_text()) if path.exists() else None) or {}
    profile = {k: v for k, v in {"address": address, "base_port": base_port, "tls": tls or None,
                                 "ca_file": str(ca_file) if ca_file else None,
                                 "token_file": str(token_file) if token_file else None}.items() if v is not None}
    if token_stdin:
        secret = path.parent / f"{name}.token"
        secret.touch(mode=0o600)
        secret.chmod(0o600)
        secret.write_text(sys.stdin.readline().strip())
        profile["token_file"] = str(secret)
    doc.setdefault("profiles", {})[name] = profile
    if default or "default_profile" not in doc:
        doc["default_profile"] = name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    if state(ctx).output is Output.table:
        err.print(f"wrote profile {name} to {path}", highlight=False)
    else:
        emit(state(ctx).output, {"profile": name, "config": str(path), **profile})


@app.command()
def stack(base_port: int = typer.Option(50051, help="first port; the services take 4 in a row"),
          run_dir: Path = typer.Option(Path(".run")),
          gate: bool = typer.Option(False, "--gate", help="a tuneforge-gate (make gate) on each service's port, "
                                    "the service itself on the port 4 further on: past capacity, calls are refused "
                                    "RESOURCE_EXHAUSTED instead of timing out")) -> None:
    """Run the four services locally (make up) until Ctrl-C."""
    from tuneforge.cli.stack import run

    raise typer.Exit(run(base_port, run_dir, gate))


@app.command()
def demo(run_dir: Path = typer.Option(Path(".run/demo")),
         tiny: bool = typer.Option(False, "--tiny", help="a tiny model built on the fly instead of SmolLM2"),
         steps: int = typer.Option(24, help="LoRA optimizer steps")) -> None:
    """The main job end to end on one machine (make demo)."""
    from tuneforge.cli.demo import run_demo

    raise typer.Exit(run_demo(run_dir, tiny=tiny, steps=steps))


@app.command("demo-rl")
def demo_rl(run_dir: Path = typer.Option(Path(".run/demo-rl")),
            tiny: bool = typer.Option(False, "--tiny", help="a tiny model built on the fly instead of SmolLM2"),
            steps: int = typer.Option(12, help="GRPO steps (one rollout and one update each)")) -> None:
    """GRPO raising a verifiable reward (length), end to end on one machine (make demo-rl)."""
    from tuneforge.cli.demo_rl import run_demo_rl

    raise typer.Exit(run_demo_rl(run_dir, tiny=tiny, steps=steps))


def main(argv: list[str] | None = None) -> int:
    """Run the command line; typed API errors become a readable message and exit code 1 (2 for
    configuration problems), never a traceback."""
    fmt = Output.table
    try:
        cmd = typer.main.get_command(app)
        try:
            result = cmd.main(args=argv, prog_name="tuneforge", standalone_mode=False)
        except click.exceptions.Exit as exc:
            return exc.exit_code
        except click.exceptions.Abort:
            return 1
        except SystemExit as exc:  # --show-completion / --install-completion exit from their callback
            return exc.code if isinstance(exc.code, int) else 0
        except click.ClickException as exc:
            exc.show()
            return exc.exit_code
        return result if isinstance(result, int) else 0
    except ApiError as exc:
        render_error(exc, _fmt(argv, fmt))
        return 1
    except ConfigError as exc:
        render_error(exc, _fmt(argv, fmt))
        return 2


def _fmt(argv: list[str] | None, default: Output) -> Output:
    args = list(sys.argv[1:] if argv is None else argv)
    for flag in ("--output", "-o"):
        if flag in args and args.index(flag) + 1 < len(args):
            try:
                return Output(args[args.index(flag) + 1])
            except ValueError:
                return default
    import os

    try:
        return Output(os.environ.get("TUNEFORGE_OUTPUT", default.value))
    except ValueError:
        return default


__all__ = ["app", "emit", "main"]

if __name__ == "__main__":
    sys.exit(main())
