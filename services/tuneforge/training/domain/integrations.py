"""Tracking integrations of a job (TensorBoard, MLflow, W&B): what CreateJob checks, what a run needs.

Credentials never travel in a request or sit in a stored spec: an integration names a *secret* the
operator configured for the tenant (``IntegrationSecrets``: in deployments, Kubernetes Secrets mounted
under ``TUNEFORGE_INTEGRATION_SECRETS_DIR/<tenant>/<name>/``, one file per key). A secret of another
tenant does not exist for the caller. A kind whose library the workers lack is refused at CreateJob,
not discovered when the run starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from tuneforge.common.errors import FieldViolation
from tuneforge.common.public_text import echo
from tuneforge.engine.spec import IntegrationKind, TrainingSpec

# The package each kind's reporter imports, and the keys its secret must hold.
PACKAGES = {IntegrationKind.TENSORBOARD: "tensorboardX", IntegrationKind.MLFLOW: "mlflow",
            IntegrationKind.WANDB: "wandb"}
REQUIRED_KEYS = {IntegrationKind.MLFLOW: ("MLFLOW_TRACKING_URI",), IntegrationKind.WANDB: ("WANDB_API_KEY",)}



class IntegrationSecrets(Protocol):
    """The operator's integration secrets per tenant, and which reporter libraries are installed."""

    def names(self, tenant: str) -> frozenset[str]:
        """The secret names configured for ``tenant``."""
        ...

    def read(self, tenant: str, name: str) -> Mapping[str, str]:
        """The secret's keys and values (never logged); ``NotFound`` when it is not configured."""
        ...

    def installed(self, kind: IntegrationKind) -> bool:
        """Whether the reporter library of ``kind`` can be imported where runs report."""
        ...


def integration_violations(spec: TrainingSpec, secrets: IntegrationSecrets) -> list[FieldViolation]:
    """Every problem of the spec's integrations, named in the spec's terms (``reporting.integrations[i]...``)."""
    out: list[FieldViolation] = []
    names = secrets.names(spec.tenant) if spec.reporting.integrations else frozenset()
    for i, integ in enumerate(spec.reporting.integrations):
        where, kind = f"reporting.integrations[{i}]", integ.kind
        if not secrets.installed(kind):
            out.append(FieldViolation(f"{where}.kind", f"{kind.value} reporting needs the {PACKAGES[kind]!r} package, "
                                      "which is not installed on the training workers: ask the operator to install "
                                      f"it (pip install {PACKAGES[kind]}), or drop this integration"))
        known = ", ".join(sorted(names)) or "none configured"
        if kind is IntegrationKind.TENSORBOARD:
            if integ.secret:
                out.append(FieldViolation(f"{where}.secret", "TensorBoard writes its event files to the platform's "
                                          "store (Job.tensorboard_logdir) and takes no secret: leave it empty"))
        elif not integ.secret:
            out.append(FieldViolation(f"{where}.secret", f"is required for {kind.value}: name an integration secret "
                                      f"holding {' and '.join(REQUIRED_KEYS[kind])} (configured for your tenant: "
                                      f"{known}); credentials never go in a request"))
        elif integ.secret not in names:
            out.append(FieldViolation(f"{where}.secret", f"no integration secret named {echo(integ.secret)} is "
                                      f"configured for your tenant (configured: {known}): use one of those, or ask "
                                      "the operator to add it under TUNEFORGE_INTEGRATION_SECRETS_DIR/<tenant>/"
                                      f"{integ.secret}/"))
        else:
            missing = [k for k in REQUIRED_KEYS[kind] if not secrets.read(spec.tenant, integ.secret).get(k)]
            if missing:
                out.append(FieldViolation(f"{where}.secret", f"the secret {echo(integ.secret)} has no "
                                          f"{', '.join(missing)}: ask the operator to add the key to it"))
    return out
