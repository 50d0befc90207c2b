"""Wire <-> domain for the training service: the ONE mapping between CreateJobRequest and TrainingSpec.

A request field maps to the training spec field of the same name in the same section
(``hyperparameters.learning_rate`` -> ``hyperparameters.learning_rate``) unless ``RENAMED`` says
otherwise; enum values map by name (``LR_SCHEDULER_COSINE`` -> ``cosine``). A zero value means "the
spec's default" (the field is left out, and the spec fills it in: defaults live only there). The same
table, read backwards, gives GetJob's resolved settings and the API name of every spec field an error
names (``method.lora.r`` -> ``hyperparameters.lora_r``), so nothing here is maintained twice.
"""

from __future__ import annotations

import functools
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, cast

from google.protobuf import json_format, timestamp_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

from tuneforge.common.errors import FieldViolation, InvalidInput
from tuneforge.common.grpc.timestamps import timestamp
from tuneforge.common.v1 import common_pb2
from tuneforge.engine.spec import IntegrationKind, MethodKind, TrainingSpec
from tuneforge.training.domain.admission import JobPlan
from tuneforge.training.domain.files import metrics_key, tensorboard_prefix
from tuneforge.training.domain.model import (
    EventKind,
    Job,
    JobCheckpoint,
    JobEvent,
    JobFilter,
    JobRequest,
    JobStatus,
    LogLevel,
)
from tuneforge.training.v1 import training_pb2 as pb

# CreateJobRequest field -> TrainingSpec field, where the two differ ("[]": an element of a list).
# One API field may feed several spec fields; the one under the job's method section is used.
RENAMED: tuple[tuple[str, str], ...] = (
    ("base_model", "model.name"),
    ("method", "method.kind"),
    ("objective", "objective.kind"),
    ("dataset_version_id", "data.train.dataset_version"),
    ("validation_dataset_version_id", "data.validation.dataset_version"),
    ("mixture[].dataset_version_id", "data.mixture[].source.dataset_version"),
    ("mixture[].weight", "data.mixture[].weight"),
    ("mixture[].task", "data.mixture[].task"),
    ("hyperparameters.lora_r", "method.lora.r"),
    ("hyperparameters.lora_alpha", "method.lora.alpha"),
    ("hyperparameters.lora_dropout", "method.lora.dropout"),
    ("hyperparameters.lora_target_modules", "method.lora.target_modules"),
    ("hyperparameters.qlora_quant_type", "method.qlora.quant_type"),
    ("hyperparameters.num_virtual_tokens", "method.prefix.num_virtual_tokens"),
    ("hyperparameters.num_virtual_tokens", "method.prompt.num_virtual_tokens"),
    ("hyperparameters.dpo_beta", "objective.dpo.beta"),
    ("hyperparameters.orpo_beta", "objective.orpo.beta"),
    ("hyperparameters.simpo_beta", "objective.simpo.beta"),
    ("hyperparameters.simpo_gamma", "objective.simpo.gamma"),
    ("hyperparameters.reward_margin", "objective.reward_model.margin"),
    ("hyperparameters.reward_center_coefficient", "objective.reward_model.center_rewards_coefficient"),
    ("hyperparameters.kto_beta", "objective.kto.beta"),
    ("hyperparameters.kto_desirable_weight", "objective.kto.desirable_weight"),
    ("hyperparameters.kto_undesirable_weight", "objective.kto.undesirable_weight"),
    ("hyperparameters.num_generations", "objective.rl.num_generations"),
    ("hyperparameters.max_new_tokens", "objective.rl.max_new_tokens"),
    ("hyperparameters.temperature", "objective.rl.temperature"),
    ("hyperparameters.top_p", "objective.rl.top_p"),
    ("hyperparameters.kl_beta", "objective.rl.beta"),  # deprecated: kl_coefficient can say 0
    ("hyperparameters.kl_coefficient", "objective.rl.beta"),
    ("hyperparameters.clip_epsilon", "objective.rl.epsilon"),
    ("hyperparameters.clip_epsilon_high", "objective.rl.epsilon_high"),
    ("hyperparameters.rl_loss_type", "objective.rl.loss_type"),
    ("hyperparameters.scale_rewards", "objective.rl.scale_rewards"),
    ("hyperparameters.reward_functions[].name", "objective.rl.rewards[].name"),
    ("hyperparameters.reward_functions[].weight", "objective.rl.rewards[].weight"),
    ("hyperparameters.reward_functions[].pattern", "objective.rl.rewards[].pattern"),
    ("hyperparameters.reward_functions[].target_length", "objective.rl.rewards[].target_length"),
    ("hyperparameters.reward_model", "objective.rl.reward_model"),
    ("hyperparameters.reward_model_weight", "objective.rl.reward_model_weight"),
    ("hyperparameters.gamma", "objective.rl.gamma"),
    ("hyperparameters.gae_lambda", "objective.rl.lam"),
    ("hyperparameters.vf_coef", "objective.rl.vf_coef"),
    ("hyperparameters.value_clip", "objective.rl.cliprange_value"),
    ("hyperparameters.max_seq_length", "data.max_seq_length"),
    ("hyperparameters.packing", "data.packing"),
    ("hyperparameters.precision", "precision"),
    ("hyperparameters.gradient_checkpointing", "gradient_checkpointing"),
    ("integrations[].kind", "reporting.integrations[].kind"),
    ("integrations[].project", "reporting.integrations[].project"),
    ("integrations[].run_name", "reporting.integrations[].run_name"),
    ("integrations[].secret", "reporting.integrations[].secret"),
)
# Request fields that describe the job, not its training.
NOT_SPEC = frozenset({"idempotency_key", "suffix", "labels", "priority"})
# Set by every request (an UNSPECIFIED value is refused, as the API documents).
REQUIRED = ("base_model", "method", "objective")
# Zero is a value here, not "the default" (a weight of 0 is refused, not replaced).
KEEP_ZERO = frozenset({"mixture[].weight", "mixture[].dataset_version_id", "integrations[].kind"})

_INDEX = re.compile(r"\[(\d+)\]")

# --------------------------------------------------------------------------------- the table


def _leaves(desc: Descriptor, prefix: str = "") -> Iterator[tuple[str, FieldDescriptor]]:
    """Every scalar/enum/repeated-scalar field of ``desc`` as (dotted API path, field)."""
    for f in desc.fields:
        path = prefix + f.name
        if path in NOT_SPEC:
            continue
        if f.message_type is not None and not f.message_type.GetOptions().map_entry:
            inner = path + "[]" if _is_repeated(f) else path
            yield from _leaves(f.message_type, inner + ".")
        else:
            yield path, f


def _is_repeated(f: FieldDescriptor) -> bool:
    return bool(f.is_repeated) if hasattr(f, "is_repeated") else f.label == FieldDescriptor.LABEL_REPEATED


def _table() -> tuple[tuple[str, str], ...]:
    renamed = {api for api, _ in RENAMED}
    same = tuple((api, api) for api, _ in _leaves(pb.CreateJobRequest.DESCRIPTOR) if api not in renamed)
    return RENAMED + same


TABLE = _table()
API_FIELDS = dict(_leaves(pb.CreateJobRequest.DESCRIPTOR))


def _targets_by_api() -> dict[str, tuple[str, ...]]:
    by_api: dict[str, list[str]] = {}
    for api, spec in TABLE:
        by_api.setdefault(api, []).append(spec)
    return {api: tuple(specs) for api, specs in by_api.items()}


# The table by API path, in table order: GetJob/ListJobs read every job's spec back through it, so a
# scan of the table per field (~60 fields a job) cost more than the database read (the load test).
_TARGETS = _targets_by_api()


def _common_prefix(paths: list[str]) -> str:
    parts = [p.split(".") for p in paths]
    common = []
    for items in zip(*parts, strict=False):
        if len(set(items)) != 1:
            break
        common.append(items[0])
    return ".".join(common)


def _spec_to_api() -> dict[str, str]:
    """Spec path -> API path for every mapped spec field and every ancestor made of one API field."""
    exact = {spec: api for api, spec in TABLE}
    under: dict[str, list[str]] = {}
    for spec, api in exact.items():
        parts = spec.split(".")
        for i in range(1, len(parts)):
            ancestor = ".".join(parts[:i])
            under.setdefault(ancestor, []).append(api)
            if ancestor.endswith("[]"):
                under.setdefault(ancestor[:-2], []).append(api)
    ancestors = {a: p for a, apis in under.items() if a not in exact and (p := _common_prefix(apis))}
    return {**ancestors, **exact}


SPEC_TO_API = _spec_to_api()
_TEXT_PATHS = sorted((p for p in SPEC_TO_API if "." in p and "[]" not in p), key=len, reverse=True)

# ------------------------------------------------------------------------- errors in API terms


def api_field(spec_path: str) -> str:
    """The API field a spec field path comes from (``data.mixture[2].weight`` -> ``mixture[2].weight``);
    paths of no request field come back unchanged."""
    indices = _INDEX.findall(spec_path)
    norm = _INDEX.sub("[]", spec_path)
    parts = norm.split(".")
    for i in range(len(parts), 0, -1):
        head = ".".join(parts[:i])
        api = SPEC_TO_API.get(head)
        if api is None:
            continue
        if api == head and i < len(parts):  # a section of the same name: keep the field under it
            api = norm
        for index in indices:
            api = api.replace("[]", f"[{index}]", 1)
        return api.replace("[]", "")
    return spec_path


_PARENTHETICAL = re.compile(r"\s*\(([^()]*)\)")
_SPEC_PATH = re.compile(r"(?<![\w.])(?:" + "|".join(TrainingSpec.model_fields) + r")\.[\w.\[\]]*\w")


def _speaks_only_spec(text: str) -> bool:
    """Whether ``text`` names a spec field that no request field reaches (engine-only settings)."""
    return any(api_field(p) == p and p not in API_FIELDS for p in _SPEC_PATH.findall(text))


def api_text(description: str) -> str:
    """A remedy in API terms: spec field paths replaced by their API names, and asides that name
    engine-only settings (which a request cannot set) left out."""
    description = _PARENTHETICAL.sub(lambda m: "" if _speaks_only_spec(m.group(1)) else m.group(0), description)
    for path in _TEXT_PATHS:
        description = re.sub(rf"(?<![\w.]){re.escape(path)}(?![\w])", api_field(path), description)
    return description


def api_violation(v: FieldViolation) -> FieldViolation:
    """A spec violation in the API's terms."""
    return FieldViolation(api_field(v.field), api_text(v.description))


def _alias_groups() -> dict[str, tuple[str, ...]]:
    """API path -> every API path that feeds the same spec field (a deprecated field and its successor)."""
    by_spec: dict[str, list[str]] = {}
    for api, spec in TABLE:
        by_spec.setdefault(spec, []).append(api)
    return {api: tuple(apis) for apis in by_spec.values() if len(apis) > 1 for api in apis}


_ALIASES = _alias_groups()


def _as_said(v: FieldViolation, said: set[str]) -> FieldViolation:
    """A violation of a field that has aliases, named as the caller set it (``kl_beta`` for a caller
    that sent ``kl_beta``, though the spec field's API name is ``kl_coefficient``)."""
    group = _ALIASES.get(v.field, ())
    if v.field in said or not group:
        return v
    name = next((a for a in group if a in said), v.field)
    return FieldViolation(name, v.description)


@contextmanager
def api_terms(request: pb.CreateJobRequest | None = None) -> Iterator[None]:
    """Re-raise ``InvalidInput`` from the domain (which speaks the spec's language) in API terms; with
    the ``request``, a field two API fields feed is named as the caller set it."""
    try:
        yield
    except InvalidInput as exc:
        said = {norm for _, norm, _, value, explicit in _values(request) if value or explicit} if request else set()
        raise InvalidInput.of([_as_said(api_violation(v), said) for v in exc.violations],
                              what="CreateJob request") from None

# ------------------------------------------------------------------------------ request -> spec


def _enum_prefix(enum: EnumDescriptor) -> str:
    return enum.values_by_number[0].name.removesuffix("UNSPECIFIED")


def _enum_to_spec(f: FieldDescriptor, number: int) -> str | None:
    value = f.enum_type.values_by_number.get(number)
    return None if value is None else value.name.removeprefix(_enum_prefix(f.enum_type)).lower()


def _enum_from_spec(f: FieldDescriptor, value: str) -> int:
    return f.enum_type.values_by_name[_enum_prefix(f.enum_type) + value.upper()].number


def _put(doc: dict[str, Any], path: str, value: Any) -> None:
    """Set ``a.b[2].c`` in a nested mapping, creating what is missing."""
    node: Any = doc
    parts = path.split(".")
    for part in parts[:-1]:
        name, _, index = part.partition("[")
        if index:
            items = node.setdefault(name, [])
            i = int(index[:-1])
            items.extend({} for _ in range(i + 1 - len(items)))
            node = items[i]
        else:
            node = node.setdefault(name, {})
    node[parts[-1]] = value


def _spec_targets(api: str) -> list[str]:
    return list(_TARGETS.get(api, ()))


def _with_indices(template: str, indexed: str) -> str:
    """``template``'s [] filled with the indices of ``indexed`` (``data.mixture[].weight``, ``mixture[2].weight``)."""
    for index in _INDEX.findall(indexed):
        template = template.replace("[]", f"[{index}]", 1)
    return template


def _spec_target(api: str, method: str | None) -> str | None:
    """The spec path an API path feeds (the one under the job's method when there are several)."""
    targets = _spec_targets(api)
    if len(targets) == 1:
        return targets[0]
    return next((t for t in targets if method and f".{method}." in t), None)


def _values(msg: Message, prefix: str = "") -> Iterator[tuple[str, str, FieldDescriptor, Any, bool]]:
    """(API path with indices, path with [], field, value, set explicitly) of every leaf of the request;
    "set explicitly": a field with presence (proto3 ``optional``) that the request sets, zero included."""
    for f in msg.DESCRIPTOR.fields:
        path = prefix + f.name
        if path in NOT_SPEC:
            continue
        value = getattr(msg, f.name)
        if f.message_type is not None and _is_repeated(f):
            for i, item in enumerate(value):
                yield from _values(item, f"{path}[{i}].")
        elif f.message_type is not None:
            yield from _values(value, path + ".")
        else:
            explicit = bool(f.has_presence) and not _is_repeated(f) and msg.HasField(f.name)
            yield path, _INDEX.sub("[]", path), f, value, explicit


def _convert(where: str, f: FieldDescriptor, value: Any) -> tuple[Any, FieldViolation | None]:
    if f.enum_type is not None:
        name = _enum_to_spec(f, value)
        if name is None:
            return None, FieldViolation(where, f"{value} is not a value of {f.enum_type.name}: use one of "
                                              + ", ".join(v.name for v in f.enum_type.values[1:]))
        return name, None
    return (list(value) if _is_repeated(f) else value), None


def job_request(req: pb.CreateJobRequest) -> JobRequest:
    """The request in the training spec's terms (validation is the spec's; see ``JobRequest``)."""
    doc: dict[str, Any] = {"data": {}}  # a request without data is told so by the data section's check
    problems: list[FieldViolation] = []
    method = _enum_to_spec(API_FIELDS["method"], req.method) if req.method else None
    written: dict[str, tuple[str, Any]] = {}  # spec path -> (API path, value): two fields may feed one
    for path, norm, f, value, explicit in _values(req):
        if not value and not explicit and norm not in KEEP_ZERO:
            if norm in REQUIRED:
                problems.append(FieldViolation(_spec_targets(norm)[0], _required(norm, f)))
            continue
        target = _spec_target(norm, method)
        where = _with_indices(target or _spec_targets(norm)[0], path)
        converted, problem = _convert(where, f, value)
        if problem is not None or target is None:
            problems.append(problem or FieldViolation(where, "does not apply to this method: leave it 0"))
            continue
        if where in written and written[where][1] != converted:
            other, said = written[where]
            problems.append(FieldViolation(where, f"{path} = {converted!r} contradicts {other} = {said!r}: "
                                                  f"set only {path}"))
            continue
        written[where] = (path, converted)
        _put(doc, where, converted)
    return JobRequest(doc, tuple(problems), req.suffix, dict(req.labels), req.priority)


def _required(api: str, f: FieldDescriptor) -> str:
    if f.enum_type is not None:
        return "is unspecified: choose " + ", ".join(v.name for v in f.enum_type.values[1:])
    return ("is required: name a registered base model (e.g. 'smollm2-135m') or a full checkpoint id "
            "('ckpt_...')" if api == "base_model" else "is required")

# ------------------------------------------------------------------------------ spec -> request


def _get(doc: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(doc, Mapping) or doc.get(part) is None:
            return None
        doc = doc[part]
    return doc


def _section_fields(doc: Mapping[str, Any], prefix: str, method: str | None) -> dict[str, Any]:
    """Request kwargs of the message at API path ``prefix`` read from spec mapping ``doc``."""
    out: dict[str, Any] = {}
    for name, f, target in _section_targets(prefix, method):
        value = _get(doc, target)
        if value is not None:
            out[name] = _enum_from_spec(f, value) if f.enum_type is not None else value
    return out


@functools.cache
def _section_targets(prefix: str, method: str | None) -> tuple[tuple[str, FieldDescriptor, str], ...]:
    """(field name, field, spec path) of each field of the message at API path ``prefix`` that applies
    to ``method`` (the table is fixed, so this is computed once per section and method)."""
    out = []
    for api, f in API_FIELDS.items():
        if "[]" in api or not api.startswith(prefix) or "." in api.removeprefix(prefix):
            continue
        target = _spec_target(api, method)  # None: the field does not apply to this method
        if target:
            out.append((api.removeprefix(prefix), f, target))
    return tuple(out)


def request_from_spec(doc: Mapping[str, Any]) -> pb.CreateJobRequest:
    """The CreateJobRequest that asks for the spec mapping ``doc`` (a YAML's sections, or a resolved
    spec): the mapping read backwards, for the fields a request can express."""
    method = _get(doc, "method.kind")
    kwargs = _section_fields(doc, "", method)
    for section in ("hyperparameters", "resources", "schedule"):
        kwargs[section] = getattr(pb, section.capitalize())(**_section_fields(doc, section + ".", method))
    kwargs["hyperparameters"].reward_functions.extend(
        pb.RewardFunction(name=r.get("name") or "", weight=r.get("weight") or 0.0, pattern=r.get("pattern") or "",
                          target_length=r.get("target_length") or 0)
        for r in _get(doc, "objective.rl.rewards") or [])
    mixture = _get(doc, "data.mixture") or []
    kwargs["mixture"] = [pb.TaskMixture(dataset_version_id=_get(m, "source.dataset_version") or "",
                                        weight=m.get("weight", 1.0), task=m.get("task") or "") for m in mixture]
    kwargs["integrations"] = [pb.Integration(**_item_fields(item, "integrations[].", "reporting.integrations[]."))
                              for item in _get(doc, "reporting.integrations") or []]
    return pb.CreateJobRequest(**kwargs)


def _item_fields(item: Mapping[str, Any], api_prefix: str, spec_prefix: str) -> dict[str, Any]:
    """Request kwargs of one element of a repeated message (API path ``api_prefix``) read from the spec
    list element ``item`` (spec path ``spec_prefix``), through the table."""
    out: dict[str, Any] = {}
    for api, f in API_FIELDS.items():
        target = _spec_target(api, None) if api.startswith(api_prefix) else None
        value = _get(item, target.removeprefix(spec_prefix)) if target else None
        if value is not None:
            out[api.removeprefix(api_prefix)] = _enum_from_spec(f, value) if f.enum_type is not None else value
    return out


def filter_from_request(req: pb.ListJobsRequest) -> JobFilter:
    """ListJobsRequest -> filters."""
    try:
        statuses = frozenset(JobStatus(s) for s in req.statuses)
    except ValueError:
        raise InvalidInput.field_error("statuses", "holds an unknown JobStatus: use the API's values") from None
    method = _enum_to_spec(API_FIELDS["method"], req.method) if req.method else None
    if req.method and method is None:
        raise InvalidInput.field_error("method", f"{req.method} is not a Method: use the API's values")
    return JobFilter(statuses=statuses, method=MethodKind(method) if method else None, labels=dict(req.labels))

# --------------------------------------------------------------------------------- job -> proto


# The request each spec reads back as (job_to_proto's costliest part), by spec instance: the repository
# shares one instance per distinct spec, and an entry holds its spec, so its id cannot be reused.
_ASKED: OrderedDict[int, tuple[TrainingSpec, pb.CreateJobRequest]] = OrderedDict()
_ASKED_MAX = 1024
_asked_lock = threading.Lock()


def _asked(spec: TrainingSpec) -> pb.CreateJobRequest:
    """``request_from_spec(spec.resolved_dict())``, computed once per spec instance (never changed in place)."""
    with _asked_lock:
        hit = _ASKED.get(id(spec))
        if hit is not None and hit[0] is spec:
            _ASKED.move_to_end(id(spec))
            return hit[1]
    asked = request_from_spec(spec.resolved_dict())
    with _asked_lock:
        _ASKED[id(spec)] = (spec, asked)
        while len(_ASKED) > _ASKED_MAX:
            _ASKED.popitem(last=False)
    return asked


def job_to_proto(job: Job) -> pb.Job:
    """Domain job -> wire message (its settings as resolved: defaults filled in)."""
    asked = _asked(job.spec)
    msg = pb.Job(
        id=job.id, status=cast(pb.JobStatus, job.status.value), method=asked.method, objective=asked.objective,
        base_model=asked.base_model, dataset_version_id=asked.dataset_version_id,
        validation_dataset_version_id=asked.validation_dataset_version_id, mixture=asked.mixture,
        hyperparameters=asked.hyperparameters, resources=asked.resources, schedule=asked.schedule,
        create_time=timestamp(job.created_at), start_time=timestamp(job.started_at),
        finish_time=timestamp(job.finished_at), trained_tokens=job.trained_tokens, current_step=job.current_step,
        total_steps=job.total_steps, result_checkpoint_id=job.result_checkpoint_id, suffix=job.suffix,
        labels=dict(job.labels), restarts=job.restarts, steps_per_second=job.steps_per_second,
        tokens_per_second=job.tokens_per_second, priority=job.priority,
        queue_reason=job.queue_reason if job.status is JobStatus.QUEUED else "", integrations=asked.integrations,
        metrics_file=metrics_key(job.tenant, job.id),
        tensorboard_logdir=tensorboard_prefix(job.tenant, job.id) if job.spec.reporting.integrations and any(
            i.kind is IntegrationKind.TENSORBOARD for i in job.spec.reporting.integrations) else "",
    )
    if job.estimated_finish and job.status is JobStatus.RUNNING:
        msg.estimated_finish.CopyFrom(timestamp(job.estimated_finish))
    if job.lease is not None and job.status is JobStatus.RUNNING:
        msg.replica = job.lease.owner
        msg.lease_expire_time.CopyFrom(timestamp(job.lease.expires_at))
    if job.error:
        msg.error.CopyFrom(common_pb2.ErrorInfo(code=job.error.code, message=api_text(job.error.message),
                                                field=api_field(job.error.field) if job.error.field else ""))
    return msg


def metrics_to_proto(data: Mapping[str, float]) -> pb.Metrics:
    """Engine metric names -> the API's Metrics."""
    g = data.get
    msg = pb.Metrics(step=int(g("step", 0)), loss=g("loss", 0.0), learning_rate=g("lr", 0.0),
                     grad_norm=g("grad_norm", 0.0), tokens_per_second=g("tokens_per_s", 0.0),
                     samples_per_second=g("samples_per_s", 0.0), peak_memory_bytes=int(g("peak_memory_bytes", 0)),
                     eval_loss=g("eval_loss", 0.0), eval_perplexity=g("eval_perplexity", 0.0), epoch=g("epoch", 0.0),
                     reward_mean=g("reward", 0.0), reward_std=g("reward_std", 0.0), kl=g("kl", 0.0),
                     entropy=g("entropy", 0.0), clip_fraction=g("clip_ratio", 0.0),
                     response_length=g("completion_length", 0.0), value_loss=g("value_loss", 0.0))
    for api, engine in PREFERENCE_METRICS.items():
        if engine in data:
            setattr(msg, api, float(data[engine]))
    return msg


# Metrics of the reward-model and KTO objectives: API field -> engine metric name.
PREFERENCE_METRICS = {"reward_accuracy": "reward_accuracy", "reward_margin_mean": "reward_margin_mean",
                      "eval_reward_accuracy": "eval_reward_accuracy",
                      "eval_reward_margin_mean": "eval_reward_margin_mean", "kto_kl": "kto_kl"}


def metrics_record(ev: JobEvent) -> dict[str, Any]:
    """A METRICS event as a record of the job's metrics file: ``{"sequence", "time", ...Metrics fields}``
    with the proto field names, every field present (the shape of ``tuneforge jobs metrics``)."""
    fields = json_format.MessageToDict(metrics_to_proto(ev.data), always_print_fields_with_no_presence=True,
                                       preserving_proto_field_name=True, unquote_int64_if_possible=True)
    when = timestamp_pb2.Timestamp()
    when.FromDatetime(ev.time)
    return {"sequence": ev.sequence, "time": when.ToJsonString(), **fields}


def event_to_proto(ev: JobEvent) -> pb.JobEvent:
    """Domain event -> wire event (one payload per kind)."""
    msg = pb.JobEvent(sequence=ev.sequence, time=timestamp(ev.time))
    if ev.kind is EventKind.STATUS:
        msg.status = cast(pb.JobStatus, JobStatus[ev.data["status"]].value)
    elif ev.kind is EventKind.METRICS:
        msg.metrics.CopyFrom(metrics_to_proto(ev.data))
    elif ev.kind is EventKind.CHECKPOINT:
        msg.checkpoint_id = ev.data["checkpoint_id"]
    else:
        level = cast(pb.LogLevel, LogLevel[ev.data.get("level", "INFO")].value)
        msg.log.CopyFrom(pb.LogEntry(level=level, message=ev.data["message"]))
    return msg


def checkpoint_to_proto(c: JobCheckpoint) -> pb.JobCheckpoint:
    """A registered checkpoint -> its summary."""
    return pb.JobCheckpoint(checkpoint_id=c.checkpoint_id, step=c.step,
                            metrics=metrics_to_proto({"step": float(c.step), **c.metrics}),
                            create_time=timestamp(c.created_at))


def plan_to_proto(plan: JobPlan) -> pb.JobPlan:
    """EstimateJob's plan -> wire (field names in the API's terms)."""
    a = plan.assessment
    msg = pb.JobPlan(memory_known=a.need is not None, device=a.device, num_devices=a.num_devices,
                     device_memory_bytes=a.device_memory, usable_memory_bytes=a.usable, fits=a.fits,
                     reasons=a.reasons(api_field), total_steps=plan.total_steps, tokens=plan.tokens,
                     tokens_source=plan.tokens_source, tokens_per_second=plan.tokens_per_second,
                     throughput_jobs=plan.throughput_jobs, notes=list(a.notes + plan.notes),
                     fixes=[pb.MemoryPlanFix(change=f.describe(api_field), fields=f.fields(api_field),
                                             memory_per_device_bytes=f.total) for f in a.fixes])
    if a.need is not None:
        n = a.need
        msg.memory_per_device.CopyFrom(pb.MemoryPlanBreakdown(
            weights=n.weights, gradients=n.gradients, optimizer=n.optimizer, activations=n.activations,
            reference_model=n.reference_model, zero3_buffer=n.zero3_buffer, total=n.total))
        msg.parameters, msg.trainable_parameters = n.params, n.trainable
    if plan.duration_s is not None:
        msg.estimated_duration.FromTimedelta(timedelta(seconds=round(plan.duration_s, 3)))
    return msg
