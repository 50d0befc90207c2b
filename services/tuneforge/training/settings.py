"""Training service settings (``TUNEFORGE_*``)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from tuneforge.common.settings import ServiceSettings


class TrainingSettings(ServiceSettings):
    """Training service settings (TUNEFORGE_*)."""

    model_config = SettingsConfigDict(env_prefix="TUNEFORGE_", extra="forbid", validate_default=True)
    service_name: str = "training"
