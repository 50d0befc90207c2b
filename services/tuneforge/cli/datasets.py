"""``tuneforge datasets``: upload, curate, list, inspect and delete datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
import yaml
from google.protobuf import json_format
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from tuneforge.cli._output import Column, emit, enum_name, err, kv, out, to_data, when
from tuneforge.cli._state import state
from tuneforge.client.errors import FieldViolation, InvalidArgument
from tuneforge.common.v1 import common_pb2
from tuneforge.datasets.v1 import datasets_pb2 as ds

app = typer.Typer(help="Upload, curate and inspect datasets.", no_args_is_help=True)

VERSION_COLUMNS = [Column("version", lambda v: v.id), Column("rows", lambda v: v.row_count),
                   Column("splits", lambda v: ", ".join(f"{k}={n}" for k, n in sorted(v.split_counts.items()))),
                   Column("kind", lambda v: enum_name(ds.RecordKind.Name(v.kind), "RECORD_KIND_")),
                   Column("parent", lambda v: v.parent_version_id), Column("created", lambda v: when(v.create_time))]
REJECT_COLUMNS = [Column("row", lambda r: r.row), Column("step", lambda r: r.step), Column("field", lambda r: r.field),
                  Column("reason", lambda r: r.reason)]


def load_pipeline(path: Path, message: type) -> Any:
    """A curation pipeline YAML (``steps: [{exact_dedup: {}}, ...]``, ``split:``,
    ``max_removal_fraction:``) as ``message`` (IngestCuration or CurateDatasetRequest); an unknown
    step or field is an InvalidArgument naming it."""
    doc = yaml.safe_load(path.read_text()) or {}
    try:
        return json_format.ParseDict(doc, message())
    except json_format.ParseError as exc:
        raise InvalidArgument(f"{path}: not a curation pipeline",
                              violations=[FieldViolation(str(path), f"{exc}; steps are named as in "
                                                         "datasets.proto CurationStep (normalize, exact_dedup, ...)")]
                              ) from None


@app.command()
def upload(ctx: typer.Context, file: Path = typer.Argument(..., exists=True, dir_okay=False),
           name: str = typer.Option(None, "--name", "-n", help="dataset name (default: the file's stem)"),
           curate: Path = typer.Option(None, "--curate", exists=True, help="pipeline YAML applied in the same pass"),
           skip_invalid: bool = typer.Option(True, "--skip-invalid/--reject-invalid",
                                             help="store the good rows and report the bad ones, or refuse the file"),
           fmt: str = typer.Option("", "--format", help="alpaca, dolly, chat, sharegpt, preference, openai_dpo, text "
                                   "(default: detect)")) -> None:
    """Upload a file as a new dataset version, with a byte progress bar and the rejected rows."""
    st = state(ctx)
    policy = ds.VALIDATION_POLICY_SKIP_INVALID if skip_invalid else ds.VALIDATION_POLICY_REJECT_UPLOAD
    extra: dict[str, Any] = {"validation_policy": policy}
    if fmt:
        extra["format"] = ds.DatasetFormat.Value(f"DATASET_FORMAT_{fmt.upper()}")
    curation = load_pipeline(curate, ds.IngestCuration) if curate else None
    with Progress(TextColumn("uploading {task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=err, transient=True) as bar:
        task = bar.add_task(file.name, total=file.stat().st_size)
        resp = st.client.upload(file, name, curation=curation,
                                on_progress=lambda done, total: bar.update(task, completed=done), **extra)
    rejected = list(st.client.rejected_rows(resp.version.id)) if resp.validation.rows_rejected else []
    if st.output.value != "table":
        emit(st.output, {"upload": resp, "rejected": rejected})
        return
    v = resp.validation
    out.print(f"[green]uploaded[/] {file.name} -> dataset [bold]{resp.dataset.name}[/] version "
              f"[bold]{resp.version.id}[/]: {v.rows_read} rows read, {v.rows_accepted} accepted, "
              f"{v.rows_rejected} rejected", highlight=False)
    if rejected:
        emit(st.output, rejected, REJECT_COLUMNS, title="rejected rows")


@app.command("curate")
def curate_cmd(ctx: typer.Context, version: str = typer.Argument(..., help="input version id"),
               pipeline: Path = typer.Option(..., "--pipeline", "-f", exists=True, help="pipeline YAML"),
               wait: bool = typer.Option(True, "--wait/--no-wait", help="follow the run until it ends")) -> None:
    """Run a curation pipeline over a version (a new version comes out)."""
    st = state(ctx)
    req = load_pipeline(pipeline, ds.CurateDatasetRequest)
    req.version_id = version
    run = st.client.datasets.CurateDataset(req).run
    if wait:
        run = st.client.wait(run, on_event=lambda e: err.print(f"  {e.message or e.step.step}", highlight=False))
    if st.output.value != "table":
        emit(st.output, run)
    else:
        emit(st.output, list(run.steps), [Column("step", lambda s: s.step), Column("in", lambda s: s.rows_in),
                                          Column("out", lambda s: s.rows_out),
                                          Column("modified", lambda s: s.rows_modified)],
             title=f"run {run.id}: {enum_name(common_pb2.OperationState.Name(run.state), 'OPERATION_STATE_')}"
                   f" -> {run.output_version_id or '-'}")
    if run.state == common_pb2.OPERATION_STATE_FAILED:
        err.print(f"[red]curation failed[/]: {run.error.code} {run.error.message}", highlight=False)
        raise typer.Exit(1)


@app.command("ls")
def ls(ctx: typer.Context) -> None:
    """List datasets."""
    st = state(ctx)
    emit(st.output, list(st.client.list_datasets()),
         [Column("id", lambda d: d.id), Column("name", lambda d: d.name),
          Column("kind", lambda d: enum_name(ds.RecordKind.Name(d.kind), "RECORD_KIND_")),
          Column("latest version", lambda d: d.latest_version_id), Column("created", lambda d: when(d.create_time))])


@app.command()
def show(ctx: typer.Context, dataset: str = typer.Argument(..., help="dataset id or name, or a version id")) -> None:
    """Show a dataset and its versions (or one version with its per-step counts)."""
    st = state(ctx)
    if dataset.startswith("dsv_"):
        v = st.client.datasets.GetDatasetVersion(ds.GetDatasetVersionRequest(version_id=dataset)).version
        emit(st.output, v, VERSION_COLUMNS)
        if st.output.value == "table" and v.steps:
            emit(st.output, list(v.steps), [Column("step", lambda s: s.step), Column("in", lambda s: s.rows_in),
                                            Column("out", lambda s: s.rows_out),
                                            Column("modified", lambda s: s.rows_modified)], title="steps")
        return
    d = st.client.datasets.GetDataset(ds.GetDatasetRequest(dataset=dataset)).dataset
    versions = list(st.client.list_dataset_versions(d.id))
    if st.output.value != "table":
        emit(st.output, {"dataset": d, "versions": versions})
        return
    kv(st.output, d, [("id", d.id), ("name", d.name), ("description", d.description),
                      ("latest version", d.latest_version_id), ("created", when(d.create_time))])
    emit(st.output, versions, VERSION_COLUMNS, title="versions")


@app.command()
def preview(ctx: typer.Context, version: str, split: str = typer.Option("", help="train, validation or test"),
            limit: int = typer.Option(5, min=1, max=500)) -> None:
    """The first rows of a version in canonical form."""
    st = state(ctx)
    rows = list(st.client.datasets.PreviewRows(ds.PreviewRowsRequest(version_id=version, split=split,
                                                                     limit=limit)).rows)
    if st.output.value != "table":
        emit(st.output, rows)
        return
    plain = [dict(to_data(r), n=i) for i, r in enumerate(rows, 1)]
    emit(st.output, plain, [Column("#", lambda r: r["n"]), Column("kind", lambda r: r.get("kind")),
                            Column("content", _row_text), Column("category", lambda r: r.get("category"))])


def _row_text(row: Any) -> str:
    if row.get("messages"):
        return "\n".join(f"{m['role']}: {m['content']}" for m in row["messages"])
    return str(row.get("text") or row.get("prompt") or "")


@app.command()
def stats(ctx: typer.Context, version: str, tokenizer: str = typer.Option("", help="folder or model name"),
          plot: Path = typer.Option(None, "--plot", help="write token-length and category histograms (.png/.svg/.html)")
          ) -> None:
    """Counts, token lengths, turns, categories, duplicates and PII of a version."""
    st = state(ctx)
    s = st.client.datasets.GetDatasetStats(ds.GetDatasetStatsRequest(version_id=version, tokenizer=tokenizer))
    if plot:
        from tuneforge.cli.report import write_dataset_stats

        write_dataset_stats(s, version, plot)
        err.print(f"wrote {plot}", highlight=False)
    if st.output.value != "table":
        emit(st.output, s)
        return
    kv(st.output, s, [("rows", s.row_count), ("splits", dict(sorted(s.split_counts.items()))),
                      ("token length", {k: round(v, 1) for k, v in sorted(s.token_length_percentiles.items())}),
                      ("turns", {k: round(v, 1) for k, v in sorted(s.turns_percentiles.items())}),
                      ("categories", dict(sorted(s.category_counts.items()))),
                      ("duplicates removed", s.duplicates_removed), ("pii found", dict(s.pii_found))],
       title=f"stats of {version}")


@app.command()
def rejects(ctx: typer.Context, version: str = typer.Argument(..., help="version id or curation run id")) -> None:
    """Rows rejected by validation or removed by curation, with row, field and reason."""
    st = state(ctx)
    emit(st.output, list(st.client.rejected_rows(version)), REJECT_COLUMNS)


@app.command()
def rm(ctx: typer.Context, target: str = typer.Argument(..., help="dataset id or name, or a version id (dsv_...)"),
       yes: bool = typer.Option(False, "--yes", "-y", help="do not ask")) -> None:
    """Delete a dataset (all its versions) or one version; refused while a job uses it."""
    st = state(ctx)
    if not yes:
        typer.confirm(f"delete {target}?", abort=True, err=True)
    if target.startswith("dsv_"):
        st.client.datasets.DeleteDatasetVersion(ds.DeleteDatasetVersionRequest(version_id=target))
    else:
        st.client.datasets.DeleteDataset(ds.DeleteDatasetRequest(dataset=target))
    emit(st.output, {"deleted": target}) if st.output.value != "table" else out.print(f"deleted {target}")
