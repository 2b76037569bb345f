"""Settings.from_env: defaults, parsing, and errors that name the variable."""

from pathlib import Path

import pytest

from api.config import ConfigError, Settings


def test_settings_defaults_point_at_the_embedded_engine():
    settings = Settings.from_env({})
    assert settings.database_url == "postgresql+psycopg://postgres:postgres@127.0.0.1:5499/postgres?sslmode=disable"
    assert settings.engine_port == 5499
    assert settings.engine_health_port == 5500
    assert settings.engine_dir == Path("var/engine")
    assert settings.db_pool_size == 5


def test_settings_database_url_normalised_to_psycopg_dialect():
    settings = Settings.from_env({"DATABASE_URL": "postgresql://u:p@db:5432/fleet?sslmode=verify-full"})
    assert settings.database_url == "postgresql+psycopg://u:p@db:5432/fleet?sslmode=verify-full"


def test_settings_engine_port_moves_default_url_and_health_port():
    settings = Settings.from_env({"FLEET_ENGINE_PORT": "6000"})
    assert ":6000/" in settings.database_url
    assert settings.engine_health_port == 6001


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DATABASE_URL", "mysql://x"),
        ("FLEET_DB_POOL_SIZE", "-1"),
        ("FLEET_DB_POOL_SIZE", "many"),
        ("FLEET_ENGINE_PORT", "70000"),
        ("FLEET_DB_POOL_TIMEOUT", "soon"),
    ],
)
def test_settings_bad_value_names_the_variable(name, value):
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})
