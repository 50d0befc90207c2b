"""Wire <-> domain conversions of the training service (the domain Enums mirror the API's by value)."""

from __future__ import annotations

from collections.abc import Mapping

from tuneforge.common.errors import InvalidInput
from tuneforge.common.grpc.timestamps import timestamp
from tuneforge.common.v1 import common_pb2
from tuneforge.training.domain.model import (
    EventKind,
    Hyperparameters,
    Job,
    JobCheckpoint,
    JobEvent,
    JobFilter,
    JobSpec,
    JobStatus,
    LogLevel,
    LrScheduler,
    Method,
    Objective,
    Precision,
    Resources,
    Schedule,
    TaskMixture,
)
from tuneforge.training.v1 import training_pb2 as pb


def _enum(cls: type, value: int, field: str) -> object:
    try:
        return cls(value)  # type: ignore[call-arg]
    except ValueError:
        raise InvalidInput.field_error(field, f"{value} is not a known value: use the API's enum") from None


def _hyper_from(h: pb.Hyperparameters) -> Hyperparameters:
    return Hyperparameters(
        learning_rate=h.learning_rate, lr_scheduler=_enum(LrScheduler, h.lr_scheduler, "hyperparameters.lr_scheduler"),
        warmup_steps=h.warmup_steps, warmup_ratio=h.warmup_ratio, epochs=h.epochs, max_steps=h.max_steps,
        micro_batch_size=h.micro_batch_size, gradient_accumulation_steps=h.gradient_accumulation_steps,
        weight_decay=h.weight_decay, max_grad_norm=h.max_grad_norm, max_seq_length=h.max_seq_length,
        packing=h.packing, seed=h.seed, lora_r=h.lora_r, lora_alpha=h.lora_alpha, lora_dropout=h.lora_dropout,
        lora_target_modules=tuple(h.lora_target_modules), dpo_beta=h.dpo_beta,
        precision=_enum(Precision, h.precision, "hyperparameters.precision"),
        gradient_checkpointing=h.gradient_checkpointing, qlora_quant_type=h.qlora_quant_type,
        num_virtual_tokens=h.num_virtual_tokens,
    )  # type: ignore[arg-type]


def spec_from_request(req: pb.CreateJobRequest) -> JobSpec:
    """CreateJobRequest -> domain spec (validation is the domain's)."""
    r, s = req.resources, req.schedule
    return JobSpec(
        base_model=req.base_model, method=_enum(Method, req.method, "method"),  # type: ignore[arg-type]
        objective=_enum(Objective, req.objective, "objective"),  # type: ignore[arg-type]
        dataset_version_id=req.dataset_version_id, validation_dataset_version_id=req.validation_dataset_version_id,
        mixture=tuple(TaskMixture(m.dataset_version_id, m.weight, m.task) for m in req.mixture),
        hyperparameters=_hyper_from(req.hyperparameters),
        resources=Resources(r.num_workers, r.use_gpu, r.zero_stage, r.offload_optimizer, r.offload_params,
                            r.max_failures),
        schedule=Schedule(s.eval_every_steps, s.early_stopping_patience, s.save_every_steps, s.keep_best_n,
                          s.keep_latest_n, s.best_metric),
        suffix=req.suffix, labels=dict(req.labels),
    )


def filter_from_request(req: pb.ListJobsRequest) -> JobFilter:
    """ListJobsRequest -> filters."""
    return JobFilter(statuses=frozenset(_enum(JobStatus, s, "statuses") for s in req.statuses),  # type: ignore[misc]
                     method=_enum(Method, req.method, "method"), labels=dict(req.labels))  # type: ignore[arg-type]


def _hyper_to(h: Hyperparameters) -> pb.Hyperparameters:
    return pb.Hyperparameters(
        learning_rate=h.learning_rate, lr_scheduler=h.lr_scheduler.value, warmup_steps=h.warmup_steps,
        warmup_ratio=h.warmup_ratio, epochs=h.epochs, max_steps=h.max_steps, micro_batch_size=h.micro_batch_size,
        gradient_accumulation_steps=h.gradient_accumulation_steps, weight_decay=h.weight_decay,
        max_grad_norm=h.max_grad_norm, max_seq_length=h.max_seq_length, packing=h.packing, seed=h.seed,
        lora_r=h.lora_r, lora_alpha=h.lora_alpha, lora_dropout=h.lora_dropout,
        lora_target_modules=list(h.lora_target_modules), dpo_beta=h.dpo_beta, precision=h.precision.value,
        gradient_checkpointing=h.gradient_checkpointing, qlora_quant_type=h.qlora_quant_type,
        num_virtual_tokens=h.num_virtual_tokens,
    )


def job_to_proto(job: Job) -> pb.Job:
    """Domain job -> wire message."""
    s, r, sch = job.spec, job.spec.resources, job.spec.schedule
    msg = pb.Job(
        id=job.id, status=job.status.value, method=s.method.value, objective=s.objective.value,
        base_model=s.base_model, dataset_version_id=s.dataset_version_id,
        validation_dataset_version_id=s.validation_dataset_version_id,
        mixture=[pb.TaskMixture(dataset_version_id=m.dataset_version_id, weight=m.weight, task=m.task)
                 for m in s.mixture],
        hyperparameters=_hyper_to(s.hyperparameters),
        resources=pb.Resources(num_workers=r.num_workers, use_gpu=r.use_gpu, zero_stage=r.zero_stage,
                               offload_optimizer=r.offload_optimizer, offload_params=r.offload_params,
                               max_failures=r.max_failures),
        schedule=pb.Schedule(eval_every_steps=sch.eval_every_steps, early_stopping_patience=sch.early_stopping_patience,
                             save_every_steps=sch.save_every_steps, keep_best_n=sch.keep_best_n,
                             keep_latest_n=sch.keep_latest_n, best_metric=sch.best_metric),
        create_time=timestamp(job.created_at), start_time=timestamp(job.started_at), finish_time=timestamp(job.finished_at),
        trained_tokens=job.trained_tokens, current_step=job.current_step, total_steps=job.total_steps,
        result_checkpoint_id=job.result_checkpoint_id, suffix=s.suffix, labels=dict(s.labels), restarts=job.restarts,
    )
    if job.error:
        msg.error.CopyFrom(common_pb2.ErrorInfo(code=job.error.code, message=job.error.message, field=job.error.field))
    return msg


def metrics_to_proto(data: Mapping[str, float]) -> pb.Metrics:
    """Engine metric names -> the API's Metrics."""
    g = data.get
    return pb.Metrics(step=int(g("step", 0)), loss=g("loss", 0.0), learning_rate=g("lr", 0.0),
                      grad_norm=g("grad_norm", 0.0), tokens_per_second=g("tokens_per_s", 0.0),
                      samples_per_second=g("samples_per_s", 0.0), peak_memory_bytes=int(g("peak_memory_bytes", 0)),
                      eval_loss=g("eval_loss", 0.0), eval_perplexity=g("eval_perplexity", 0.0), epoch=g("epoch", 0.0))


def event_to_proto(ev: JobEvent) -> pb.JobEvent:
    """Domain event -> wire event (one payload per kind)."""
    msg = pb.JobEvent(sequence=ev.sequence, time=timestamp(ev.time))
    if ev.kind is EventKind.STATUS:
        msg.status = JobStatus[ev.data["status"]].value
    elif ev.kind is EventKind.METRICS:
        msg.metrics.CopyFrom(metrics_to_proto(ev.data))
    elif ev.kind is EventKind.CHECKPOINT:
        msg.checkpoint_id = ev.data["checkpoint_id"]
    else:
        msg.log.CopyFrom(pb.LogEntry(level=LogLevel[ev.data.get("level", "INFO")].value, message=ev.data["message"]))
    return msg


def checkpoint_to_proto(c: JobCheckpoint) -> pb.JobCheckpoint:
    """A registered checkpoint -> its summary."""
    return pb.JobCheckpoint(checkpoint_id=c.checkpoint_id, step=c.step,
                            metrics=metrics_to_proto({"step": float(c.step), **c.metrics}), create_time=timestamp(c.created_at))
