"""``tuneforge jobs watch``: a live view of a training job from its event stream.

Step/total with a progress bar, loss and eval loss, tokens/s, ETA, checkpoint events and a loss
sparkline. The SDK re-attaches after a dropped stream from the last sequence seen. The exit code
is the job's outcome (see ``EXIT_CODES``); Ctrl-C detaches and leaves the job running.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from tuneforge.cli._output import sparkline
from tuneforge.client import Client
from tuneforge.training.v1 import training_pb2 as tr

EXIT_CODES = {tr.JOB_STATUS_SUCCEEDED: 0, tr.JOB_STATUS_FAILED: 1, tr.JOB_STATUS_CANCELLED: 3}
DETACHED_EXIT = 130


@dataclass
class WatchState:
    """What the view shows, updated event by event."""

    job_id: str
    status: str = "-"
    step: int = 0
    total: int = 0
    loss: float | None = None
    eval_loss: float | None = None
    tokens_per_s: float | None = None
    losses: list[float] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)
    last_log: str = ""
    started: float | None = None
    first_step: int = 0

    def apply(self, event: tr.JobEvent) -> str | None:
        """Update from one event; return a line worth printing on a non-terminal output."""
        which = event.WhichOneof("payload")
        if which == "status":
            self.status = tr.JobStatus.Name(event.status).removeprefix("JOB_STATUS_")
            return f"status {self.status}"
        if which == "metrics":
            m = event.metrics
            if m.eval_loss:
                self.eval_loss = m.eval_loss
                return f"step {m.step} eval_loss {m.eval_loss:.4f}"
            if self.started is None:
                self.started, self.first_step = time.monotonic(), m.step
            self.step, self.loss = max(self.step, m.step), m.loss
            self.tokens_per_s = m.tokens_per_second or self.tokens_per_s
            self.losses.append(m.loss)
            return f"step {m.step}/{self.total or '?'} loss {m.loss:.4f}"
        if which == "checkpoint_id":
            self.checkpoints.append(event.checkpoint_id)
            return f"checkpoint {event.checkpoint_id} at step {self.step}"
        if which == "log":
            self.last_log = event.log.message
        return None

    def eta(self) -> str:
        """Remaining time from the steps done since the first one seen."""
        if not self.started or not self.total or self.step <= self.first_step:
            return "-"
        per_step = (time.monotonic() - self.started) / (self.step - self.first_step)
        left = max(self.total - self.step, 0) * per_step
        return f"{int(left // 60)}m{int(left % 60):02d}s"

    def render(self) -> RenderableType:
        """The live panel."""
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold")
        grid.add_column()
        fmt = lambda v: f"{v:.4f}" if v is not None else "-"  # noqa: E731
        grid.add_row("job", f"{self.job_id}  [{self.status}]")
        bar = ProgressBar(total=self.total or 1, completed=self.step, width=40)
        grid.add_row("step", Group(Text(f"{self.step}/{self.total or '?'}  ETA {self.eta()}"), bar))
        grid.add_row("loss", f"{fmt(self.loss)}  eval loss {fmt(self.eval_loss)}")
        grid.add_row("tokens/s", f"{self.tokens_per_s:.0f}" if self.tokens_per_s else "-")
        grid.add_row("curve", sparkline(self.losses) or "-")
        grid.add_row("checkpoints", ", ".join(self.checkpoints[-3:]) or "-")
        if self.last_log:
            grid.add_row("log", self.last_log[:100])
        return grid


def watch(client: Client, job_id: str, console: Console, *, live: bool | None = None) -> tr.Job:
    """Follow the job to its end, drawing the view; KeyboardInterrupt propagates (the caller detaches)."""
    job = client.training.GetJob(tr.GetJobRequest(job_id=job_id)).job
    view = WatchState(job.id, total=job.total_steps)
    live = console.is_terminal if live is None else live

    def refresh_total(event: tr.JobEvent) -> None:
        # total_steps is known once the engine has planned the run (around the first step).
        if not view.total and event.WhichOneof("payload") in ("status", "metrics"):
            view.total = client.training.GetJob(tr.GetJobRequest(job_id=job_id)).job.total_steps

    def reattached(after: int) -> None:
        view.last_log = f"stream dropped; re-attached after event {after}"
        if not live:
            console.print(view.last_log, highlight=False)

    if not live:
        def on_event(event: tr.JobEvent) -> None:
            refresh_total(event)
            line = view.apply(event)
            if line:
                console.print(line, highlight=False)
        return _final(client.wait(job.id, on_event=on_event, on_reattach=reattached), view, console)
    with Live(view.render(), console=console, refresh_per_second=4, transient=False) as screen:
        def on_live_event(event: tr.JobEvent) -> None:
            refresh_total(event)
            view.apply(event)
            screen.update(view.render())
        done = client.wait(job.id, on_event=on_live_event, on_reattach=reattached)
    return _final(done, view, console)


def _final(job: tr.Job, view: WatchState, console: Console) -> tr.Job:
    status = tr.JobStatus.Name(job.status).removeprefix("JOB_STATUS_")
    style = "green" if job.status == tr.JOB_STATUS_SUCCEEDED else "red"
    console.print(f"[{style}]job {job.id} {status}[/] after {job.current_step} steps, {job.trained_tokens} tokens"
                  + (f"; result checkpoint {job.result_checkpoint_id}" if job.result_checkpoint_id else "")
                  + (f"; error {job.error.code}: {job.error.message}" if job.error.code else ""), highlight=False)
    return job

