"""Argument checks of the Alembic runner (no database is touched)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.fixtures.sample_migrations import ALPHA

from tuneforge.common import errors
from tuneforge.common.db import alembic_config, run_migrations, version_table_for


@pytest.mark.parametrize(
    "table",
    [
        "alembic_version",
        "alembic_version_",
        "Alembic_Version_x",
        "alembic_version_a-b",
        "versions",
        "alembic_version_" + "x" * 48,
    ],
)
def test_version_table_must_be_per_service(table: str, tmp_path: Path) -> None:
    with pytest.raises(errors.InvalidInput) as info:
        run_migrations(f"sqlite:///{tmp_path / 'm.db'}", ALPHA, table)
    assert info.value.field == "version_table"
    assert not (tmp_path / "m.db").exists()  # refused before connecting


def test_migrations_folder_needs_env_py(tmp_path: Path) -> None:
    with pytest.raises(errors.InvalidInput) as info:
        alembic_config(tmp_path, version_table_for("alpha"))
    assert info.value.field == "script_location"
    assert str(tmp_path) in str(info.value)


def test_alembic_config_carries_version_table_and_url() -> None:
    cfg = alembic_config(ALPHA, "alembic_version_alpha", url="sqlite:///x.db")
    assert cfg.get_main_option("script_location") == str(ALPHA)
    assert cfg.attributes == {"version_table": "alembic_version_alpha", "url": "sqlite:///x.db"}
    assert version_table_for("datasets") == "alembic_version_datasets"
