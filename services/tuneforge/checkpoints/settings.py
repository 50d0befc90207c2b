"""Checkpoint service settings: the shared ones plus its own (``TUNEFORGE_*``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from tuneforge.common.settings import ServiceSettings


class CheckpointSettings(ServiceSettings):
    """Checkpoint service settings (``TUNEFORGE_*``)."""

    model_config = SettingsConfigDict(env_prefix="TUNEFORGE_", extra="forbid", validate_default=True)
    service_name: str = "checkpoints"
    download_chunk_bytes: int = Field(1 << 20, ge=64 << 10, le=8 << 20, description="Bytes per DownloadFile message.")
    hygiene_interval_s: float = Field(3600.0, ge=0, description="Seconds between hygiene passes; 0 disables.")
    orphan_grace_s: float = Field(6 * 3600.0, ge=60, description="Unregistered files younger than this are kept.")
    upload_timeout_s: float = Field(24 * 3600.0, ge=60, description="Incomplete multipart uploads older are aborted.")
    export_ray_address: str = Field(
        "", description="Ray address exports run on as Ray tasks ('' = in this process, the default; 'local' = start one).")
