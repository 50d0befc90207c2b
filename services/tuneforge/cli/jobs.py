"""``tuneforge jobs``: create fine-tuning jobs from YAML, list, inspect, cancel, watch, report."""

from __future__ import annotations

from pathlib import Path

import typer

from tuneforge.cli._output import Column, emit, enum_name, err, kv, out, when
from tuneforge.cli._state import state
from tuneforge.cli.watch import DETACHED_EXIT, EXIT_CODES, watch
from tuneforge.client import jobspec
from tuneforge.training.v1 import training_pb2 as tr

app = typer.Typer(help="Fine-tuning jobs.", no_args_is_help=True)


def _status(job: tr.Job) -> str:
    return enum_name(tr.JobStatus.Name(job.status), "JOB_STATUS_")


JOB_COLUMNS = [Column("id", lambda j: j.id), Column("status", _status),
               Column("method", lambda j: enum_name(tr.Method.Name(j.method), "METHOD_")),
               Column("objective", lambda j: enum_name(tr.Objective.Name(j.objective), "OBJECTIVE_")),
               Column("base model", lambda j: j.base_model), Column("step", lambda j: f"{j.current_step}/{j.total_steps}"),
               Column("suffix", lambda j: j.suffix), Column("created", lambda j: when(j.create_time))]
CKPT_COLUMNS = [Column("checkpoint", lambda c: c.checkpoint_id), Column("step", lambda c: c.step),
                Column("loss", lambda c: c.metrics.loss), Column("eval loss", lambda c: c.metrics.eval_loss),
                Column("created", lambda c: when(c.create_time))]


@app.command()
def create(ctx: typer.Context,
           file: Path = typer.Option(..., "--file", "-f", exists=True, help="job YAML (the engine spec's shape)"),
           follow: bool = typer.Option(False, "--watch", "-w", help="watch the job after creating it")) -> None:
    """Create a job from a YAML file (the same shape as ``python -m tuneforge.engine --config``)."""
    st = state(ctx)
    job = st.client.create_job(jobspec.load(file))
    if st.output.value != "table":
        emit(st.output, job)
    else:
        out.print(f"created job [bold]{job.id}[/] ({_status(job)}); follow it with `tuneforge jobs watch {job.id}`",
                  highlight=False)
    if follow:
        _watch(ctx, job.id)


@app.command("ls")
def ls(ctx: typer.Context,
       status: list[str] = typer.Option([], "--status", help="validating, queued, running, succeeded, failed, cancelled"),
       label: list[str] = typer.Option([], "--label", help="key=value (repeatable)")) -> None:
    """List jobs, newest first."""
    st = state(ctx)
    statuses = [tr.JobStatus.Value(f"JOB_STATUS_{s.upper()}") for s in status]
    labels = dict(item.split("=", 1) for item in label)
    emit(st.output, list(st.client.list_jobs(statuses=statuses or None, labels=labels or None)), JOB_COLUMNS)


@app.command()
def get(ctx: typer.Context, job_id: str) -> None:
    """Show one job."""
    st = state(ctx)
    j = st.client.training.GetJob(tr.GetJobRequest(job_id=job_id)).job
    hp = j.hyperparameters
    kv(st.output, j, [("id", j.id), ("status", _status(j)), ("base model", j.base_model),
                      ("method", enum_name(tr.Method.Name(j.method), "METHOD_")),
                      ("objective", enum_name(tr.Objective.Name(j.objective), "OBJECTIVE_")),
                      ("dataset version", j.dataset_version_id), ("step", f"{j.current_step}/{j.total_steps}"),
                      ("tokens", j.trained_tokens), ("learning rate", hp.learning_rate),
                      ("result checkpoint", j.result_checkpoint_id),
                      ("error", f"{j.error.code}: {j.error.message}" if j.error.code else ""),
                      ("integrations", ", ".join(_integration(i) for i in j.integrations)),
                      ("metrics file", j.metrics_file), ("tensorboard logdir", j.tensorboard_logdir),
                      ("created", when(j.create_time)), ("finished", when(j.finish_time))])


def _integration(i: tr.Integration) -> str:
    kind = enum_name(tr.IntegrationKind.Name(i.kind), "INTEGRATION_KIND_")
    return kind + (f" (secret {i.secret})" if i.secret else "")


@app.command()
def cancel(ctx: typer.Context, job_id: str) -> None:
    """Cancel a queued or running job (a finished job is left as it is)."""
    st = state(ctx)
    job = st.client.training.CancelJob(tr.CancelJobRequest(job_id=job_id)).job
    emit(st.output, job) if st.output.value != "table" else out.print(f"job {job.id}: {_status(job)}")


@app.command()
def checkpoints(ctx: typer.Context, job_id: str) -> None:
    """The checkpoints a job registered, by step."""
    st = state(ctx)
    emit(st.output, list(st.client.list_job_checkpoints(job_id)), CKPT_COLUMNS)


@app.command("watch")
def watch_cmd(ctx: typer.Context, job_id: str) -> None:
    """Follow a job live; exits 0 succeeded, 1 failed, 3 cancelled; Ctrl-C detaches (130) without cancelling."""
    _watch(ctx, job_id)


def _watch(ctx: typer.Context, job_id: str) -> None:
    st = state(ctx)
    try:
        job = watch(st.client, job_id, out)
    except KeyboardInterrupt:
        err.print(f"\ndetached; job {job_id} keeps running (`tuneforge jobs watch {job_id}` re-attaches)",
                  highlight=False)
        raise typer.Exit(DETACHED_EXIT) from None
    raise typer.Exit(EXIT_CODES.get(job.status, 1))


@app.command()
def metrics(ctx: typer.Context, job_id: str,
            output_file: Path = typer.Option(None, "--out", help="write here (.jsonl as stored, or .csv); "
                                             "default: stdout")) -> None:
    """Download the job's metrics file (Job.metrics_file): one record per logged step or evaluation."""
    import csv
    import io

    from tuneforge.client._shared import metrics_records, write_whole

    st = state(ctx)
    data = st.client.download_metrics(job_id)
    rows = metrics_records(data)
    if output_file and output_file.suffix == ".csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["sequence"])
        writer.writeheader()
        writer.writerows(rows)
        data = buf.getvalue().encode()
    elif st.output.value != "table" and not output_file:
        emit(st.output, rows)
        return
    if output_file:
        write_whole(output_file, data)
        err.print(f"wrote {len(rows)} metric records to {output_file}", highlight=False)
    else:
        out.print(data.decode(), end="", markup=False, highlight=False, soft_wrap=True)


@app.command()
def report(ctx: typer.Context, job_id: str,
           output_file: Path = typer.Option(None, "--out", help="HTML file (default: <job>.html)"),
           png: Path = typer.Option(None, "--png", help="also write the charts as a PNG")) -> None:
    """Write a self-contained HTML report: loss/eval-loss curves, LR, tokens/s, checkpoints marked."""
    from tuneforge.cli.report import job_report

    st = state(ctx)
    path = job_report(st.client, job_id, output_file or Path(f"{job_id}.html"), png)
    emit(st.output, {"html": str(path), "png": str(png or "")}) if st.output.value != "table" else \
        out.print(f"wrote {path}" + (f" and {png}" if png else ""), highlight=False)


def _gib(n: int) -> str:
    return f"{n / 1024**3:.2f} GiB"


@app.command()
def estimate(ctx: typer.Context,
             file: Path = typer.Option(..., "--file", "-f", exists=True, help="job YAML (as for `jobs create`)")) -> None:
    """Plan a job without creating it: memory per GPU, whether it fits and how to make it fit, steps, duration."""
    st = state(ctx)
    p = st.client.estimate_job(jobspec.load(file))
    m = p.memory_per_device
    memory = (f"{_gib(m.total)} per {p.device.upper()} (weights {_gib(m.weights)}, gradients {_gib(m.gradients)}, "
              f"optimizer {_gib(m.optimizer)}, activations {_gib(m.activations)}"
              + (f", reference model {_gib(m.reference_model)}" if m.reference_model else "") + ")"
              if p.memory_known else "not planned")
    duration = str(p.estimated_duration.ToTimedelta()) if p.HasField("estimated_duration") else "unknown"
    kv(st.output, p, [("fits", "yes" if p.fits else "no"), ("memory", memory),
                      ("device memory", f"{_gib(p.device_memory_bytes)} ({_gib(p.usable_memory_bytes)} usable)"
                       if p.device_memory_bytes else "not declared"),
                      ("why not", "; ".join(p.reasons)),
                      ("fixes", "; ".join(f"{f.change}: {_gib(f.memory_per_device_bytes)}" for f in p.fixes)),
                      ("steps", p.total_steps or "unknown"), ("tokens", p.tokens or "unknown"),
                      ("throughput", f"{p.tokens_per_second:.0f} tokens/s ({p.throughput_jobs} earlier jobs)"
                       if p.throughput_jobs else "not measured yet"), ("duration", duration)])
    if not p.fits:
        raise typer.Exit(1)
