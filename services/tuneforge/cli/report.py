"""Pictures: self-contained HTML reports (inline SVG, no scripts, nothing fetched) and PNGs.

Plotting library: matplotlib (pinned in requirements.lock). Chosen for long-term value: twenty
years of a stable API, wheels on PyPI for every platform, no browser, JavaScript runtime or network
needed to draw (the Agg/SVG backends are pure C++/Python), PNG and SVG from the same figure, and
the library ML engineers already read. Interactive JS libraries (plotly, bokeh) either embed a
multi-megabyte script per report or load it from a CDN, and need a headless browser (kaleido) for
PNGs.

Each chart element carries an id (``gid``) so tests and people can find it in the SVG:
``loss-curve``, ``eval-loss-curve``, ``lr-curve``, ``tokens-curve``, ``checkpoint-N``, ``reward-curve``,
``metric-<name>``, ``token-hist``, ``category-bars``.
"""

from __future__ import annotations

import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from tuneforge.client import Client
from tuneforge.datasets.v1 import datasets_pb2 as ds
from tuneforge.evaluation.v1 import evaluation_pb2 as ev
from tuneforge.training.v1 import training_pb2 as tr

COLORS = {"loss": "#1f77b4", "eval": "#d62728", "ckpt": "#2ca02c", "lr": "#9467bd", "tokens": "#ff7f0e",
          "model": "#1f77b4", "baseline": "#7f7f7f", "reward": "#17becf"}
CSS = """body{font-family:system-ui,sans-serif;margin:2rem;color:#222;max-width:1100px}
table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.3rem .6rem;text-align:left;
vertical-align:top}th{background:#f3f3f3}.better{color:#2ca02c}.worse{color:#d62728}svg{max-width:100%;height:auto}
.sample td{white-space:pre-wrap;max-width:340px}"""


def _svg(fig: Figure) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>")


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table class='{cls}'><tr>{head}</tr>{body}</table>"


def _write(fig: Figure, html_text: str, out: Path, png: Path | None) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html_text)
    if png:
        png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(png, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


# -- jobs -------------------------------------------------------------------------------------------

def job_figure(steps: list[tr.Metrics], evals: list[tr.Metrics], checkpoints: list[tuple[int, str]]) -> Figure:
    """Loss and eval loss (checkpoints marked), learning rate, tokens/s, sharing the step axis; and for
    online RL (GRPO, RLOO, PPO: steps that report a response length) the mean reward first."""
    online = any(m.response_length for m in steps)
    fig, axes = plt.subplots(4 if online else 3, 1, figsize=(9, 10.5 if online else 8), sharex=True,
                             gridspec_kw={"height_ratios": [1.6, 2.2, 1, 1] if online else [2.2, 1, 1]})
    ax_loss, ax_lr, ax_tok = axes[-3:]
    x = [m.step for m in steps]
    if online:
        (reward,) = axes[0].plot(x, [m.reward_mean for m in steps], color=COLORS["reward"], lw=2.5, marker="o",
                                 ms=3, label="mean reward")
        reward.set_gid("reward-curve")
        axes[0].set_ylabel("reward")
        axes[0].legend(loc="lower right")
        axes[0].grid(alpha=0.3)
    (line,) = ax_loss.plot(x, [m.loss for m in steps], color=COLORS["loss"], lw=2.5, label="train loss")
    line.set_gid("loss-curve")
    if evals:
        (eline,) = ax_loss.plot([m.step for m in evals], [m.eval_loss for m in evals], color=COLORS["eval"], lw=2.5,
                                marker="o", label="eval loss")
        eline.set_gid("eval-loss-curve")
    for i, (step, ckpt_id) in enumerate(checkpoints):
        mark = ax_loss.axvline(step, color=COLORS["ckpt"], ls="--", lw=2, label="checkpoint" if i == 0 else None)
        mark.set_gid(f"checkpoint-{i}")
        ax_loss.annotate(ckpt_id[-6:], (step, 1), xycoords=("data", "axes fraction"), fontsize=7,
                         color=COLORS["ckpt"], rotation=90, va="top", ha="right")
    ax_loss.set_ylabel("loss")
    ax_loss.legend(loc="upper right")
    ax_loss.grid(alpha=0.3)
    (lr,) = ax_lr.plot(x, [m.learning_rate for m in steps], color=COLORS["lr"], lw=2)
    lr.set_gid("lr-curve")
    ax_lr.set_ylabel("learning rate")
    ax_lr.grid(alpha=0.3)
    (tok,) = ax_tok.plot(x, [m.tokens_per_second for m in steps], color=COLORS["tokens"], lw=2)
    tok.set_gid("tokens-curve")
    ax_tok.set_ylabel("tokens/s")
    ax_tok.set_xlabel("step")
    ax_tok.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def job_report(client: Client, job_id: str, out: Path, png: Path | None = None) -> Path:
    """Replay a job's events and write its report (HTML, and a PNG of the charts when asked)."""
    job = client.training.GetJob(tr.GetJobRequest(job_id=job_id)).job
    events = job_events(client, job_id, job)
    metrics = [e.metrics for e in events if e.WhichOneof("payload") == "metrics"]
    steps = [m for m in metrics if not m.eval_loss]
    evals = [m for m in metrics if m.eval_loss]
    ckpts = [(c.step, c.checkpoint_id) for c in client.list_job_checkpoints(job_id)]
    fig = job_figure(steps, evals, ckpts)
    status = tr.JobStatus.Name(job.status).removeprefix("JOB_STATUS_").lower()
    facts = _table(["", ""], [["status", status], ["base model", html.escape(job.base_model)],
                              ["method", tr.Method.Name(job.method).removeprefix("METHOD_").lower()],
                              ["dataset version", job.dataset_version_id],
                              ["steps", f"{job.current_step}/{job.total_steps}"], ["tokens", job.trained_tokens],
                              ["result checkpoint", job.result_checkpoint_id or "-"]])
    ckpt_rows = [[c, s, next((f"{m.eval_loss:.4f}" for m in evals if m.step == s), "-")] for s, c in ckpts]
    body = (facts + "<h2>Training curves</h2>" + _svg(fig) + "<h2>Checkpoints</h2>"
            + _table(["checkpoint", "step", "eval loss"], ckpt_rows))
    return _write(fig, _page(f"Job {job.id}", body), out, png)


def job_events(client: Client, job_id: str, job: tr.Job | None = None) -> list[tr.JobEvent]:
    """Every event of a job so far (all of them once it has finished)."""
    job = job or client.training.GetJob(tr.GetJobRequest(job_id=job_id)).job
    if job.status in (tr.JOB_STATUS_SUCCEEDED, tr.JOB_STATUS_FAILED, tr.JOB_STATUS_CANCELLED):
        return list(client.training.StreamJobEvents(tr.StreamJobEventsRequest(job_id=job_id), timeout=60))
    return _events_so_far(client, job_id)


def _events_so_far(client: Client, job_id: str) -> list[tr.JobEvent]:
    """Events of a running job up to now (the stream stays open while it runs: read with a short deadline)."""
    from tuneforge.client.errors import DeadlineExceeded

    events: list[tr.JobEvent] = []
    try:
        for e in client.training.StreamJobEvents(tr.StreamJobEventsRequest(job_id=job_id), timeout=3):
            events.append(e)
    except DeadlineExceeded:
        pass
    return events


# -- evaluations ------------------------------------------------------------------------------------

def eval_figure(e: ev.Evaluation) -> Figure:
    """One panel per metric: model vs baseline bars with 95% intervals where computed."""
    model, base = _ref(e.model), _ref(e.baseline)
    names = sorted({m.name for r in e.results for m in r.metrics})
    fig, axes = plt.subplots(1, max(len(names), 1), figsize=(max(3.2 * len(names), 4), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names, strict=False):
        values = []
        for label, key, color in ((model, "model", COLORS["model"]), (base, "baseline", COLORS["baseline"])):
            m = next((m for r in e.results if _ref(r.model) == label for m in r.metrics if m.name == name), None)
            if m is not None and label != "-":
                values.append((key, m, color))
        xs = list(range(len(values)))
        yerr = [[max(m.value - m.ci_low, 0) if (m.ci_low or m.ci_high) else 0 for _, m, _ in values],
                [max(m.ci_high - m.value, 0) if (m.ci_low or m.ci_high) else 0 for _, m, _ in values]]
        bars = ax.bar(xs, [m.value for _, m, _ in values], color=[c for _, _, c in values], yerr=yerr, capsize=6)
        for bar, (key, _, _) in zip(bars, values, strict=True):
            bar.set_gid(f"metric-{name}-{key}")
        ax.set_xticks(xs, [k for k, _, _ in values])
        ax.set_title(name)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def _ref(m: ev.ModelRef) -> str:
    return m.checkpoint_id or m.base_model or "-"


def eval_report(client: Client, evaluation_id: str, out: Path, png: Path | None = None) -> Path:
    """Write an evaluation's report: metric comparison with intervals, samples side by side."""
    e = client.evaluation.GetEvaluation(ev.GetEvaluationRequest(evaluation_id=evaluation_id)).evaluation
    fig = eval_figure(e)
    rows = []
    cmp = None
    if e.baseline.WhichOneof("source"):
        cmp = client.evaluation.CompareModels(ev.CompareModelsRequest(evaluation_id=evaluation_id))
        for c in cmp.comparisons:
            cls = "better" if c.model_better else "worse"
            rows.append([html.escape(c.name), f"{c.model_value:.4f}", f"{c.baseline_value:.4f}",
                         f"<span class='{cls}'>{c.delta:+.4f}</span>"])
    else:
        rows = [[html.escape(m.name), f"{m.value:.4f}", "-", "-"] for r in e.results for m in r.metrics]
    body = (_table(["", ""], [["model", html.escape(_ref(e.model))], ["baseline", html.escape(_ref(e.baseline))],
                              ["datasets", ", ".join(d.version_id for d in e.datasets)]])
            + "<h2>Metrics</h2>" + _svg(fig) + _table(["metric", "fine-tuned", "base", "delta"], rows)
            + (f"<p>{html.escape(cmp.summary)}</p>" if cmp else "") + "<h2>Samples</h2>" + _samples(client, e))
    return _write(fig, _page(f"Evaluation {e.id}", body), out, png)


def _samples(client: Client, e: ev.Evaluation, limit: int = 12) -> str:
    """Generations side by side, through the evaluation service (wherever its report is stored)."""
    from itertools import islice

    from tuneforge.client.errors import FailedPrecondition

    try:
        samples = list(islice(client.list_evaluation_samples(e.id, page_size=limit), limit))
    except FailedPrecondition as exc:
        return f"<p>No samples: {html.escape(exc.message)}</p>"
    rows = [[html.escape(s.prompt), html.escape(s.model_output), html.escape(s.baseline_output or "-"),
             html.escape(s.reference)] for s in samples if s.model_output or s.baseline_output]
    return _table(["prompt", "fine-tuned", "base", "reference"], rows, cls="sample") if rows else \
        "<p>No generations (no generation metric was requested).</p>"


# -- datasets ---------------------------------------------------------------------------------------

def dataset_figure(stats: ds.GetDatasetStatsResponse, version: str) -> Figure:
    """Token-length histogram and rows per category."""
    fig, (ax_len, ax_cat) = plt.subplots(1, 2, figsize=(11, 3.8))
    buckets = list(stats.token_length_histogram)
    bars = ax_len.bar([b.lower for b in buckets], [b.count for b in buckets],
                      width=[max(b.upper - b.lower, 1e-9) for b in buckets], align="edge", color=COLORS["loss"])
    for bar in bars:
        bar.set_gid("token-hist")
    ax_len.set_title(f"token length ({version})")
    ax_len.set_xlabel("tokens")
    ax_len.set_ylabel("rows")
    cats = sorted(stats.category_counts.items(), key=lambda kv: -kv[1])[:20] or [("(none)", 0)]
    cbars = ax_cat.barh([c for c, _ in cats][::-1], [n for _, n in cats][::-1], color=COLORS["tokens"])
    for bar in cbars:
        bar.set_gid("category-bars")
    ax_cat.set_title("rows per category")
    fig.tight_layout()
    return fig


def write_dataset_stats(stats: ds.GetDatasetStatsResponse, version: str, out: Path) -> Path:
    """Write the dataset histograms: ``.png``/``.svg`` directly, ``.html`` as a page."""
    fig = dataset_figure(stats, version)
    if out.suffix == ".html":
        return _write(fig, _page(f"Dataset version {version}", _svg(fig)), out, None)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out
