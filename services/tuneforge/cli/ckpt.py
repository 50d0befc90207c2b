"""``tuneforge ckpt``: list, download (verified), export, alias and pin checkpoints."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from tuneforge.checkpoints.v1 import checkpoints_pb2 as ck
from tuneforge.cli._output import Column, emit, enum_name, err, kv, out, when
from tuneforge.cli._state import state

app = typer.Typer(help="Checkpoints: list, download, export, aliases, pins.", no_args_is_help=True)

MANIFEST_COLUMNS = [Column("checkpoint", lambda m: m.checkpoint_id), Column("step", lambda m: m.step),
                    Column("kind", lambda m: enum_name(ck.CheckpointKind.Name(m.kind), "CHECKPOINT_KIND_")),
                    Column("eval loss", lambda m: m.metrics.get("eval_loss", 0.0)),
                    Column("aliases", lambda m: ", ".join(m.aliases)),
                    Column("size", lambda m: f"{sum(f.size for f in m.files) / 1e6:.1f} MB"),
                    Column("created", lambda m: when(m.create_time))]


@app.command("ls")
def ls(ctx: typer.Context, job_id: str,
       by: str = typer.Option("", "--by", help="order by this metric, best first (e.g. eval_loss)"),
       greater_is_better: bool = typer.Option(False, help="for --by: greater values are better")) -> None:
    """A job's checkpoints (by step, or best first by a metric)."""
    st = state(ctx)
    order = ck.CHECKPOINT_ORDER_METRIC if by else ck.CHECKPOINT_ORDER_STEP
    items = list(st.client.list_checkpoints(job_id, order=order, metric=by or None,
                                            greater_is_better=greater_is_better if by else None))
    emit(st.output, items, MANIFEST_COLUMNS)


@app.command()
def show(ctx: typer.Context, checkpoint: str = typer.Argument(..., help="checkpoint id or <job_id>@<alias>")) -> None:
    """A checkpoint's manifest: files with sizes and sha256, metrics, lineage."""
    st = state(ctx)
    m = st.client.checkpoints.GetManifest(ck.GetManifestRequest(checkpoint=checkpoint)).manifest
    kv(st.output, m, [("checkpoint", m.checkpoint_id), ("step", m.step), ("job", m.lineage.job_id),
                      ("base model", m.lineage.base_model), ("dataset version", m.lineage.dataset_version_id),
                      ("metrics", {k: round(v, 4) for k, v in sorted(m.metrics.items())}),
                      ("aliases", ", ".join(m.aliases)), ("uri", m.uri)])
    if st.output.value == "table":
        emit(st.output, list(m.files), [Column("file", lambda f: f.path), Column("bytes", lambda f: f.size),
                                        Column("sha256", lambda f: f.sha256[:16] + "…")])


@app.command()
def download(ctx: typer.Context, checkpoint: str, dest: Path = typer.Argument(..., help="folder to write into")) -> None:
    """Download every file of a checkpoint, each sha256-verified (resumable: good files are kept)."""
    st = state(ctx)
    m = st.client.checkpoints.GetManifest(ck.GetManifestRequest(checkpoint=checkpoint)).manifest
    with Progress(TextColumn("downloading {task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=err, transient=True) as bar:
        task = bar.add_task(m.checkpoint_id, total=sum(f.size for f in m.files))
        st.client.download(m, dest, on_progress=lambda done, total: bar.update(task, completed=done))
    if st.output.value != "table":
        emit(st.output, {"checkpoint_id": m.checkpoint_id, "dest": str(dest), "files": list(m.files)})
    else:
        out.print(f"downloaded {m.checkpoint_id} ({len(m.files)} files, sha256 verified) into {dest}", highlight=False)


@app.command()
def export(ctx: typer.Context, checkpoint: str,
           fmt: str = typer.Option("merged", "--format", help="merged (LoRA into its base), adapter or full"),
           destination: str = typer.Option("", help="prefix in the tenant's export area")) -> None:
    """Export a checkpoint as a safetensors folder in the object store."""
    st = state(ctx)
    resp = st.client.checkpoints.ExportCheckpoint(ck.ExportCheckpointRequest(
        checkpoint=checkpoint, format=ck.ExportFormat.Value(f"EXPORT_FORMAT_{fmt.upper()}"), destination=destination))
    emit(st.output, resp) if st.output.value != "table" else \
        out.print(f"exported {checkpoint} ({fmt}, {len(resp.files)} files) to {resp.uri}", highlight=False)


@app.command()
def alias(ctx: typer.Context, job_id: str, name: str = typer.Argument(None, help="alias to move (omit to list)"),
          checkpoint: str = typer.Argument(None, help="target checkpoint id")) -> None:
    """List a job's aliases with their history, or point one at a checkpoint."""
    st = state(ctx)
    if name and checkpoint:
        a = st.client.checkpoints.SetAlias(ck.SetAliasRequest(job_id=job_id, alias=name, checkpoint_id=checkpoint)).alias
        emit(st.output, a) if st.output.value != "table" else out.print(f"{a.name} -> {a.checkpoint_id}")
        return
    aliases = list(st.client.checkpoints.ListAliases(ck.ListAliasesRequest(job_id=job_id)).aliases)
    emit(st.output, aliases, [Column("alias", lambda a: a.name), Column("checkpoint", lambda a: a.checkpoint_id),
                              Column("previous", lambda a: ", ".join(h.checkpoint_id for h in a.history[1:4]))])


@app.command()
def pin(ctx: typer.Context, checkpoint: str, holder: str = typer.Option("cli", help="who holds the pin"),
        release: bool = typer.Option(False, "--release", help="unpin instead")) -> None:
    """Pin a checkpoint (retention skips it, deletion is refused) or release the pin."""
    st = state(ctx)
    if release:
        released = st.client.checkpoints.UnpinCheckpoint(ck.UnpinCheckpointRequest(checkpoint_id=checkpoint,
                                                                                    holder=holder)).released
        result = {"checkpoint_id": checkpoint, "holder": holder, "pinned": False, "released": released}
    else:
        st.client.checkpoints.PinCheckpoint(ck.PinCheckpointRequest(checkpoint_id=checkpoint, holder=holder))
        result = {"checkpoint_id": checkpoint, "holder": holder, "pinned": True}
    emit(st.output, result) if st.output.value != "table" else \
        out.print(f"{checkpoint} {'pinned by' if result['pinned'] else 'unpinned for'} {holder}", highlight=False)
