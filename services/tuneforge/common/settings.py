"""Runtime settings, read once at start-up from the environment (prefix ``TUNEFORGE_``).

Helm sets them through ConfigMaps (plain values) and Secrets (``*_FILE`` variants point at mounted
secret files). ``load_settings`` fails fast and lists every bad setting at once.

Example::

    TUNEFORGE_PORT=50051 TUNEFORGE_OBJECT_STORE_URI=s3://tuneforge?endpoint=minio:9000 \\
    TUNEFORGE_S3_SECRET_KEY_FILE=/var/run/secrets/s3/secret python -m tuneforge.checkpoints
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tuneforge.common.errors import FieldViolation, InvalidInput

ENV_PREFIX = "TUNEFORGE_"
DEFAULT_DATA_DIR = Path(".run/data")


class ServiceSettings(BaseSettings):
    """Settings every service shares. Subclass to add service-specific ones."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)

    service_name: str = Field("tuneforge", description="Name used in logs and health checks.")
    host: str = Field("127.0.0.1", description="Interface to listen on; 0.0.0.0 in containers.")
    port: int = Field(0, ge=0, le=65535, description="Port; 0 picks a free one (tests).")
    data_dir: Path = Field(DEFAULT_DATA_DIR, description="Folder for embedded defaults (SQLite, file store).")
    object_store_uri: str = Field("", description="file:///abs/dir or s3://bucket/prefix?endpoint=host:port")
    s3_access_key: SecretStr = Field(SecretStr(""), description="S3 access key id.")
    s3_secret_key: SecretStr = Field(SecretStr(""), description="S3 secret key.")
    database_url: SecretStr = Field(SecretStr(""), description="sqlite:///path or postgresql+psycopg://...")
    auth_tokens: SecretStr = Field(
        SecretStr(""),
        description="Comma-separated tenant:token pairs (or a file of them, one per line, via *_FILE).",
    )
    auth_disabled: bool = Field(False, description="Accept unauthenticated calls as tenant 'default'.")
    log_json: bool = Field(False, description="Emit JSON log lines.")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR.")
    grace_period_s: float = Field(10.0, ge=0, description="Seconds in-flight calls get to finish on stop.")
    max_workers: int = Field(32, ge=2, le=1024, description="gRPC handler threads (half of them at most serve "
                             "streaming calls: see max_streams).")
    max_message_bytes: int = Field(16 << 20, ge=1 << 20, description="Largest gRPC message accepted.")
    work_sweep_interval_s: float = Field(600.0, ge=0, description="How often leftover temporary work folders "
                                         "(upload spools, staging, exports) are swept; 0: at start-up only.")
    max_streams: int = Field(0, ge=0, le=1024, description="Streaming calls (event streams, uploads, downloads) "
                             "open at once; more are answered RESOURCE_EXHAUSTED. 0: half of max_workers, so "
                             "unary calls and health checks always keep handler threads.")
    max_active_calls: int = Field(0, ge=0, le=1024, description="Unary calls running at once; more wait for a "
                                  "turn until the queueing target. 0: 4 per CPU, at least 16 (the work is mostly CPU in "
                                  "one Python process, where more threads only share the GIL; the bound stays above "
                                  "what a few long calls such as exports hold).")
    queue_target_ms: int = Field(100, ge=0, le=60_000, description="When every active slot is taken, how long after "
                                 "its arrival a unary call may wait for one before it is answered RESOURCE_EXHAUSTED "
                                 "(reason OVERLOADED), so that above capacity clients back off instead of timing "
                                 "out. 0: calls wait for a turn however long it takes.")

    metrics_port: int = Field(0, ge=0, le=65535, description="Port of the Prometheus /metrics endpoint, on the "
                              "same host as the service (e.g. 9090 in containers); 0: no endpoint.")
    otlp_endpoint: str = Field("", description="OpenTelemetry collector (OTLP/gRPC, e.g. http://otel-collector:4317) "
                               "that receives this service's traces; empty: the standard OTEL_EXPORTER_OTLP_ENDPOINT, "
                               "else traces are not exported (nothing connects).")

    def stream_limit(self) -> int:
        """The streaming calls served at once (``max_streams``, or half the handler threads)."""
        return self.max_streams or max(1, self.max_workers // 2)

    def active_limit(self) -> int:
        """The unary calls run at once (``max_active_calls``, or 4 per CPU and at least 16)."""
        return self.max_active_calls or max(16, 4 * (os.cpu_count() or 1))

    def call_limit(self) -> int:
        """The calls served at once: every handler thread but those kept for health checks
        (an eighth, at least 1)."""
        return max(1, self.max_workers - max(1, self.max_workers // 8))

    # Peer services (host:port), shared by every service so that one ConfigMap can serve them all.
    datasets_address: str = Field("", description="DatasetService address, e.g. datasets:50051.")
    training_address: str = Field("", description="TrainingService address.")
    evaluation_address: str = Field("", description="EvaluationService address.")
    checkpoints_address: str = Field("", description="CheckpointService address.")
    models_dir: Path = Field(Path(".run/models"), description="Local base models by name: <models_dir>/<name>/ "
                             "(safetensors folders); shared by training, evaluation and checkpoints.")

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        level = v.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR")
        return level

    @field_validator("object_store_uri")
    @classmethod
    def _store_scheme(cls, v: str) -> str:
        if v and not v.startswith(("file://", "s3://")):
            raise ValueError("must start with file:// or s3:// (e.g. s3://bucket?endpoint=host:9000)")
        return v

    @model_validator(mode="after")
    def _auth_configured(self) -> ServiceSettings:
        if not self.auth_disabled and not self.auth_tokens.get_secret_value():
            raise ValueError(
                "no auth tokens: set TUNEFORGE_AUTH_TOKENS (tenant:token,...) or TUNEFORGE_AUTH_TOKENS_FILE, "
                "or TUNEFORGE_AUTH_DISABLED=true for a local single-user stack"
            )
        return self

    def resolved_object_store_uri(self) -> str:
        """The object store URI, defaulting to a folder under ``data_dir``."""
        return self.object_store_uri or f"file://{(self.data_dir / 'objects').resolve()}"

    def resolved_database_url(self) -> str:
        """The database URL, defaulting to a SQLite file under ``data_dir``."""
        url = self.database_url.get_secret_value()
        return url or f"sqlite:///{(self.data_dir / f'{self.service_name}.db').resolve()}"


S = TypeVar("S", bound=ServiceSettings)


# One environment (a local stack, a shared ConfigMap) may carry every service's settings: a variable
# is unknown, and rejected as a likely typo, only when no tuneforge service defines it. Each
# service keeps its settings class in ``tuneforge.<service>.settings``, a light module (pydantic
# only), so this import is cheap. A missing module is an error, never skipped: skipping one made
# the other services refuse its settings (TUNEFORGE_MAX_UPLOAD_BYTES stopped three services).
SERVICE_SETTINGS_MODULES = ("datasets", "training", "evaluation", "checkpoints")


def service_settings_classes() -> list[type[ServiceSettings]]:
    """The settings class of every service, from its ``settings`` module."""
    import importlib

    classes: list[type[ServiceSettings]] = []
    for svc in SERVICE_SETTINGS_MODULES:
        module = importlib.import_module(f"tuneforge.{svc}.settings")
        classes += [obj for obj in vars(module).values() if isinstance(obj, type) and issubclass(obj, ServiceSettings)
                    and obj is not ServiceSettings and obj.__module__ == module.__name__]
    return classes


def _all_setting_names(cls: type[ServiceSettings]) -> set[str]:
    names = set(cls.model_fields)
    for other in service_settings_classes():
        names |= set(other.model_fields)
    return names


def _read_secret_files(cls: type[ServiceSettings], environ: dict[str, str]) -> dict[str, Any]:
    """``TUNEFORGE_X_FILE=/path`` sets field x from the file's content (Kubernetes secrets)."""
    values: dict[str, Any] = {}
    for name in cls.model_fields:
        path = environ.get(f"{ENV_PREFIX}{name.upper()}_FILE")
        if path:
            values[name] = Path(path).read_text().strip()
    return values


def load_settings(cls: type[S], environ: dict[str, str] | None = None, **overrides: Any) -> S:
    """Build settings from the environment (and ``*_FILE`` secrets), reporting every problem at once.

    Args:
        cls: the settings class of the service.
        environ: environment to read (default: ``os.environ``).
        **overrides: explicit values (tests, CLI flags) that win over the environment.

    Raises:
        InvalidInput: one violation per bad setting, named by its environment variable.
    """
    env = dict(os.environ if environ is None else environ)
    known = {f"{ENV_PREFIX}{n.upper()}" for n in _all_setting_names(cls)}
    known |= {f"{k}_FILE" for k in known}
    violations = [
        FieldViolation(k, "unknown setting; check the spelling against the README's settings table")
        for k in sorted(env)
        if k.startswith(ENV_PREFIX) and k not in known and not k.startswith(f"{ENV_PREFIX}TEST_")
    ]
    try:
        values = {**_read_secret_files(cls, env), **overrides}
        settings = _build(cls, env, values)
    except ValidationError as exc:
        violations += [_violation(err) for err in exc.errors()]
        settings = None
    except OSError as exc:
        violations.append(FieldViolation("*_FILE", f"cannot read secret file: {exc.strerror}"))
        settings = None
    if violations or settings is None:
        raise InvalidInput.of(violations, what="settings")
    return settings


def _build(cls: type[S], env: dict[str, str], values: dict[str, Any]) -> S:
    old = os.environ.copy()
    try:  # pydantic-settings reads os.environ; swap in the requested environment for the build
        os.environ.clear()
        os.environ.update({k: v for k, v in env.items() if not k.endswith("_FILE")})
        return cls(**values)
    finally:
        os.environ.clear()
        os.environ.update(old)


def _violation(err: Any) -> FieldViolation:
    loc = [str(p) for p in err.get("loc", ()) if p != "__root__"]
    name = f"{ENV_PREFIX}{loc[0].upper()}" if loc else "settings"
    # Never echo the offending value: it may be a secret.
    return FieldViolation(name, str(err.get("msg", "invalid value")).removeprefix("Value error, "))
