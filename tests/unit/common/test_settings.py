from pathlib import Path

import pytest

from tuneforge.common.errors import InvalidInput
from tuneforge.common.settings import ServiceSettings, load_settings

TOKENS = "acme:0123456789abcdef0123"


def test_defaults_are_embedded_sqlite_and_file_store(tmp_path):
    s = load_settings(ServiceSettings, environ={"TUNEFORGE_AUTH_TOKENS": TOKENS, "TUNEFORGE_DATA_DIR": str(tmp_path)})
    assert s.resolved_database_url() == f"sqlite:///{tmp_path / 'tuneforge.db'}"
    assert s.resolved_object_store_uri() == f"file://{tmp_path / 'objects'}"


def test_every_bad_setting_is_reported_at_once():
    env = {"TUNEFORGE_PORT": "99999", "TUNEFORGE_LOG_LEVEL": "LOUD", "TUNEFORGE_OBJECT_STORE_URI": "ftp://x",
           "TUNEFORGE_PROT": "1", "TUNEFORGE_AUTH_TOKENS": TOKENS}
    with pytest.raises(InvalidInput) as info:
        load_settings(ServiceSettings, environ=env)
    fields = {v.field for v in info.value.violations}
    assert fields == {"TUNEFORGE_PORT", "TUNEFORGE_LOG_LEVEL", "TUNEFORGE_OBJECT_STORE_URI", "TUNEFORGE_PROT"}


def test_missing_auth_tokens_is_an_error_unless_disabled():
    with pytest.raises(InvalidInput) as info:
        load_settings(ServiceSettings, environ={})
    assert "TUNEFORGE_AUTH_TOKENS" in str(info.value)
    assert load_settings(ServiceSettings, environ={"TUNEFORGE_AUTH_DISABLED": "true"}).auth_disabled


def test_secret_files_and_no_secret_in_errors(tmp_path: Path):
    secret = tmp_path / "s3"
    secret.write_text("super-secret-value-123\n")
    s = load_settings(ServiceSettings, environ={"TUNEFORGE_S3_SECRET_KEY_FILE": str(secret),
                                                "TUNEFORGE_AUTH_TOKENS": TOKENS})
    assert s.s3_secret_key.get_secret_value() == "super-secret-value-123"
    assert "super-secret" not in repr(s)
    with pytest.raises(InvalidInput) as info:
        load_settings(ServiceSettings, environ={"TUNEFORGE_PORT": "sekrit-port-value", "TUNEFORGE_AUTH_TOKENS": TOKENS})
    assert "sekrit" not in str(info.value)


def test_another_services_setting_is_accepted_but_a_typo_is_not():
    from tuneforge.training.settings import TrainingSettings

    env = {"TUNEFORGE_AUTH_TOKENS": TOKENS, "TUNEFORGE_HYGIENE_INTERVAL_S": "60"}  # a checkpoints setting
    assert load_settings(TrainingSettings, environ=env).service_name == "training"
    with pytest.raises(InvalidInput) as info:
        load_settings(TrainingSettings, environ={**env, "TUNEFORGE_HYGENE_INTERVAL_S": "60"})
    assert [v.field for v in info.value.violations] == ["TUNEFORGE_HYGENE_INTERVAL_S"]


def _env_value(field) -> str:
    """A valid environment value for a settings field: its default, as the environment spells it."""
    from pydantic import SecretStr

    value = field.default
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:  # unset by default (e.g. TUNEFORGE_TRAIN_GPUS): any valid value of its type
        return "1"
    return str(value)


def _every_setting():
    from tuneforge.common.settings import service_settings_classes

    classes = service_settings_classes()
    return classes, [(owner, name, field) for owner in classes for name, field in owner.model_fields.items()
                     if name not in {"service_name", "auth_tokens", "auth_disabled"}]


CLASSES, SETTINGS = _every_setting()


def test_every_service_has_its_own_settings_module():
    assert sorted(c.__module__ for c in CLASSES) == [f"tuneforge.{s}.settings" for s in
                                                     ("checkpoints", "datasets", "evaluation", "training")]


@pytest.mark.parametrize("reader", CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("owner, name, field", SETTINGS, ids=[f"{o.__name__}.{n}" for o, n, _ in SETTINGS])
def test_one_environment_carries_every_services_every_setting(reader, owner, name, field, tmp_path):
    """Every service starts with any service's setting in its environment (a shared ConfigMap),
    and applies it when the setting is its own."""
    value = _env_value(field)
    if name == "data_dir":
        value = str(tmp_path)
    env = {"TUNEFORGE_AUTH_TOKENS": TOKENS, f"TUNEFORGE_{name.upper()}": value}
    settings = load_settings(reader, environ=env)
    if name in reader.model_fields:
        got = getattr(settings, name)
        got = got.get_secret_value() if hasattr(got, "get_secret_value") else got
        assert str(got).lower() == value.lower() or got == type(got)(value)
