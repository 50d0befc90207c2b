"""Dataset service settings (pydantic only: every service imports this module to know every setting,
so one environment, e.g. a shared ConfigMap, can carry all four services' settings)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from tuneforge.common.settings import ServiceSettings


class DatasetSettings(ServiceSettings):
    """Dataset service settings (``TUNEFORGE_*``)."""

    model_config = SettingsConfigDict(env_prefix="TUNEFORGE_", extra="forbid", validate_default=True)
    service_name: str = "datasets"
    max_upload_bytes: int = Field(10 << 30, ge=1, description="Largest upload (compressed bytes).")
    max_row_bytes: int = Field(1 << 20, ge=64, description="Largest row in bytes.")
    max_rows: int = Field(50_000_000, ge=1, description="Most rows per file.")
    max_archive_bytes: int = Field(20 << 30, ge=1, description="Most bytes an archive or compressed file expands to.")
    max_archive_entries: int = Field(1000, ge=1, description="Most entries in a zip/tar archive.")
    max_expansion_ratio: float = Field(200.0, ge=1, description="Most decompressed/compressed size ratio.")
    curation_workers: int = Field(2, ge=1, le=64, description="Curation runs executed at once.")
    max_mixture_rows: int = Field(10_000_000, ge=1, description="Most rows one CreateMixture writes (total_rows).")
