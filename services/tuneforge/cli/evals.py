"""``tuneforge eval``: evaluate a model (or base vs fine-tuned), compare, A/B rate, report."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from tuneforge.cli._output import Column, emit, enum_name, err, kv, out, when
from tuneforge.cli._state import state
from tuneforge.common.v1 import common_pb2
from tuneforge.evaluation.v1 import evaluation_pb2 as ev

app = typer.Typer(help="Evaluations: metrics, base vs fine-tuned, blind A/B ratings.", no_args_is_help=True)
pairs_app = typer.Typer(help="Blind side-by-side pairs for human rating.", no_args_is_help=True)
app.add_typer(pairs_app, name="pairs")


def model_ref(text: str) -> ev.ModelRef:
    """``ckpt_...`` or ``job_...@alias`` -> a checkpoint; anything else -> a base model name."""
    if text.startswith("ckpt_") or "@" in text:
        return ev.ModelRef(checkpoint_id=text)
    return ev.ModelRef(base_model=text)


def _ref(m: ev.ModelRef) -> str:
    return m.checkpoint_id or m.base_model or "-"


def _state_name(e: ev.Evaluation) -> str:
    return enum_name(common_pb2.OperationState.Name(e.state), "OPERATION_STATE_")


@app.command()
def create(ctx: typer.Context, model: str = typer.Option(..., help="checkpoint id, <job>@<alias> or base model name"),
           dataset: list[str] = typer.Option(..., "--dataset", help="version id, optionally :split (repeatable)"),
           metric: list[str] = typer.Option(["perplexity"], "--metric", help="perplexity, bleu, rouge, exact_match, "
                                            "token_f1, multiple_choice, classification, safety, forgetting"),
           baseline: str = typer.Option("", help="a second model to compare against (e.g. the base)"),
           max_samples: int = typer.Option(0, help="cap per dataset (0 = all)"),
           max_new_tokens: int = typer.Option(0, help="generation length (0 = the default)"),
           wait: bool = typer.Option(True, "--wait/--no-wait")) -> None:
    """Start an evaluation (and follow it to its end by default)."""
    st = state(ctx)
    datasets = []
    for item in dataset:
        version, _, split = item.partition(":")
        datasets.append(ev.EvalDataset(version_id=version, split=split, max_samples=max_samples))
    req = ev.CreateEvaluationRequest(model=model_ref(model), datasets=datasets,
                                     metrics=[ev.Metric.Value(f"METRIC_{m.upper()}") for m in metric],
                                     generation=ev.GenerationConfig(max_new_tokens=max_new_tokens))
    if baseline:
        req.baseline.CopyFrom(model_ref(baseline))
    e = st.client.create_evaluation(req)
    err.print(f"evaluation {e.id} started", highlight=False)
    if wait:
        e = st.client.wait(e, on_event=lambda p: err.print(f"  {p.done}/{p.total} {p.message}", highlight=False))
    _show(ctx, e)
    if e.state == common_pb2.OPERATION_STATE_FAILED:
        raise typer.Exit(1)


@app.command("ls")
def ls(ctx: typer.Context) -> None:
    """List evaluations, newest first."""
    st = state(ctx)
    emit(st.output, list(st.client.list_evaluations()),
         [Column("id", lambda e: e.id), Column("state", _state_name), Column("model", lambda e: _ref(e.model)),
          Column("baseline", lambda e: _ref(e.baseline)), Column("created", lambda e: when(e.create_time))])


@app.command()
def show(ctx: typer.Context, evaluation_id: str) -> None:
    """One evaluation with its metric values (and 95% intervals where computed)."""
    st = state(ctx)
    _show(ctx, st.client.evaluation.GetEvaluation(ev.GetEvaluationRequest(evaluation_id=evaluation_id)).evaluation)


def _show(ctx: typer.Context, e: ev.Evaluation) -> None:
    st = state(ctx)
    if st.output.value != "table":
        emit(st.output, e)
        return
    kv(st.output, e, [("id", e.id), ("state", _state_name(e)), ("model", _ref(e.model)),
                      ("baseline", _ref(e.baseline)), ("report", e.report_uri),
                      ("error", f"{e.error.code}: {e.error.message}" if e.error.code else "")])
    rows = [(r, m) for r in e.results for m in r.metrics]
    emit(st.output, rows, [Column("model", lambda x: _ref(x[0].model)), Column("dataset", lambda x: x[0].dataset_version_id),
                           Column("metric", lambda x: x[1].name), Column("value", lambda x: f"{x[1].value:.4f}"),
                           Column("95% CI", lambda x: _ci(x[1])), Column("n", lambda x: x[1].count)])


def _ci(m: ev.MetricValue) -> str:
    return f"[{m.ci_low:.4f}, {m.ci_high:.4f}]" if m.ci_low or m.ci_high else "-"


@app.command()
def compare(ctx: typer.Context, evaluation_id: str) -> None:
    """Model vs baseline, metric by metric, with intervals where the metric has one."""
    st = state(ctx)
    cmp = st.client.evaluation.CompareModels(ev.CompareModelsRequest(evaluation_id=evaluation_id))
    if st.output.value != "table":
        emit(st.output, cmp)
        return
    e = st.client.evaluation.GetEvaluation(ev.GetEvaluationRequest(evaluation_id=evaluation_id)).evaluation
    cis = {(_ref(r.model), r.dataset_version_id, m.name): _ci(m) for r in e.results for m in r.metrics}
    model, base = _ref(e.model), _ref(e.baseline)
    emit(st.output, list(cmp.comparisons), [
        Column("dataset", lambda c: c.dataset_version_id), Column("metric", lambda c: c.name),
        Column("model", lambda c: f"{c.model_value:.4f} {cis.get((model, c.dataset_version_id, c.name), '-')}"),
        Column("baseline", lambda c: f"{c.baseline_value:.4f} {cis.get((base, c.dataset_version_id, c.name), '-')}"),
        Column("delta", lambda c: f"{c.delta:+.4f}"),
        Column("better", lambda c: "[green]yes[/]" if c.model_better else "[red]no[/]")],
        title=f"{model} vs {base}")
    out.print(cmp.summary + (" [red](forgetting flagged)[/]" if cmp.forgetting_flagged else ""), highlight=False)


@app.command()
def samples(ctx: typer.Context, evaluation_id: str,
            limit: int = typer.Option(20, "--limit", min=1, help="at most this many examples")) -> None:
    """Generations side by side: prompt, fine-tuned, base and reference, in dataset order."""
    from itertools import islice

    st = state(ctx)
    rows = list(islice(st.client.list_evaluation_samples(evaluation_id, page_size=min(limit, 1000)), limit))
    emit(st.output, rows, [Column("prompt", lambda s: s.prompt), Column("fine-tuned", lambda s: s.model_output),
                           Column("base", lambda s: s.baseline_output), Column("reference", lambda s: s.reference)])


@pairs_app.command("export")
def pairs_export(ctx: typer.Context, evaluation_id: str, seed: int = typer.Option(0),
                 output_file: Path = typer.Option(None, "--out", help="write JSON lines here (default: stdout)")) -> None:
    """Export blind, shuffled pairs of a comparison (which side is which model stays hidden)."""
    st = state(ctx)
    pairs = list(st.client.evaluation.ExportPairs(ev.ExportPairsRequest(evaluation_id=evaluation_id, seed=seed)).pairs)
    if output_file:
        from tuneforge.cli._output import to_data

        output_file.write_text("".join(json.dumps(to_data(p)) + "\n" for p in pairs))
        err.print(f"wrote {len(pairs)} pairs to {output_file}", highlight=False)
        return
    emit(st.output, pairs, [Column("pair", lambda p: p.pair_id), Column("prompt", lambda p: p.prompt),
                            Column("left", lambda p: p.left), Column("right", lambda p: p.right)])


@app.command()
def rate(ctx: typer.Context, evaluation_id: str, rater: str = typer.Option("cli", help="your name"),
         limit: int = typer.Option(0, help="rate at most this many pairs (0 = all)")) -> None:
    """Rate blind pairs in the terminal: l (left better), r (right better), t (tie), s (skip), q (quit)."""
    st = state(ctx)
    pairs = list(st.client.evaluation.ExportPairs(ev.ExportPairsRequest(evaluation_id=evaluation_id)).pairs)
    choice = {"l": ev.PREFERENCE_LEFT, "r": ev.PREFERENCE_RIGHT, "t": ev.PREFERENCE_TIE}
    ratings: list[ev.Rating] = []
    for i, p in enumerate(pairs[: limit or None], 1):
        out.rule(f"pair {i}/{len(pairs)}")
        out.print(f"[bold]prompt[/]: {p.prompt}\n[bold cyan]left[/]:  {p.left}\n[bold magenta]right[/]: {p.right}",
                  highlight=False)
        answer = typer.prompt("better? [l/r/t/s/q]", default="s", err=True).strip().lower()[:1]
        if answer == "q":
            break
        if answer in choice:
            ratings.append(ev.Rating(pair_id=p.pair_id, preference=choice[answer], rater=rater))
    recorded = 0
    if ratings:
        recorded = st.client.evaluation.RecordRatings(ev.RecordRatingsRequest(evaluation_id=evaluation_id,
                                                                              ratings=ratings)).recorded
    emit(st.output, {"recorded": recorded}) if st.output.value != "table" else out.print(f"recorded {recorded} ratings")


@app.command()
def winrates(ctx: typer.Context, evaluation_id: str) -> None:
    """The model's win rate over the baseline from the recorded ratings, with its 95% interval."""
    st = state(ctx)
    w = st.client.evaluation.GetWinRates(ev.GetWinRatesRequest(evaluation_id=evaluation_id))
    kv(st.output, w, [("model win rate", f"{w.model_win_rate.value:.3f} {_ci(w.model_win_rate)}"),
                      ("tie rate", f"{w.tie_rate:.3f}"), ("ratings", w.ratings)])


@app.command()
def report(ctx: typer.Context, evaluation_id: str,
           output_file: Path = typer.Option(None, "--out", help="HTML file (default: <evaluation>.html)"),
           png: Path = typer.Option(None, "--png", help="also write the chart as a PNG")) -> None:
    """Write a self-contained HTML report: base vs fine-tuned metrics with intervals, samples side by side."""
    from tuneforge.cli.report import eval_report

    st = state(ctx)
    path = eval_report(st.client, evaluation_id, output_file or Path(f"{evaluation_id}.html"), png)
    emit(st.output, {"html": str(path), "png": str(png or "")}) if st.output.value != "table" else \
        out.print(f"wrote {path}" + (f" and {png}" if png else ""), highlight=False)
