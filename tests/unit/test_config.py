"""Settings.from_env: defaults, parsing, and errors that name the variable."""

import dataclasses
import re
from pathlib import Path

import pytest

import config
from config import ConfigError, Settings


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
        ("FLEET_ENGINE_PORT", "0"),
        ("FLEET_KEY_CACHE_SECONDS", "nan"),
        ("FLEET_JOBS_TICK_SECONDS", "inf"),
        ("FLEET_EFFICIENCY_ALERT_THRESHOLD", "0"),
        ("FLEET_EFFICIENCY_ALERT_THRESHOLD", "1.01"),
        ("FLEET_MAX_INTERVAL_KWH", "0"),
        ("FLEET_ALERT_WINDOW_HOURS", "745"),
    ],
)
def test_settings_bad_value_names_the_variable(name, value):
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


# --- one declaration per variable, and the README's table in step with it ---------------------------------------

ROOT = Path(__file__).resolve().parents[2]
#: Variables in the README's table that are not the platform's settings, and why.
NOT_SETTINGS = {
    "FLEET_TEST_ENGINES": "read by tests/conftest.py only",
    "FLEET_TIMESCALEDB_TARBALL": "read by scripts/provision-native.sh only",
    "PROMETHEUS_MULTIPROC_DIR": "prometheus_client's own variable, set by docker/gunicorn.conf.py",
}


def _readme_settings_table() -> dict[str, str]:
    """variable -> its default cell, from the README's `| variable | default | meaning |` table."""
    lines = (ROOT / "README.md").read_text().splitlines()
    start = lines.index("| variable | default | meaning |") + 2
    rows: dict[str, str] = {}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        name_cell, default_cell = (cell.strip() for cell in line.strip("|").split(" | ")[:2])
        assert name_cell.startswith("`") and name_cell.count("`") == 2, f"one variable per row: {line}"
        name = name_cell.strip("`")
        assert name not in rows, f"{name} is in the README's table twice"
        rows[name] = default_cell
    return rows


def _readme_default(var: config.EnvVar) -> str:
    if var.default_text is not None:
        return var.default_text
    value = var.default
    return f"`{value:g}`" if isinstance(value, float) else f"`{value}`"


def test_every_setting_is_in_the_readme_table_with_its_default():
    table = _readme_settings_table()
    missing = sorted(set(config.VARIABLES) - set(table))
    assert missing == [], f"declared in config/ but not in the README's table: {missing}"
    wrong = {
        name: (table[name], _readme_default(var))
        for name, var in config.VARIABLES.items()
        if table[name] != _readme_default(var)
    }
    assert wrong == {}, "README default cell vs the declaration's default"


def test_the_readme_table_lists_no_undeclared_variable():
    stray = sorted(set(_readme_settings_table()) - set(config.VARIABLES) - set(NOT_SETTINGS))
    assert stray == [], f"in the README's table but declared nowhere: {stray}"


def test_every_field_is_one_declared_variable():
    names = [var.name for var in config.DECLARATIONS.values()]
    assert len(names) == len(set(names)) == len(dataclasses.fields(Settings))
    for var in config.VARIABLES.values():
        assert var.doc, f"{var.name} has no documentation"
        assert var.default is not None or var.default_text is not None, f"{var.name}: say what unset means"


#: Environment variables code may still read directly, and why.
READ_DIRECTLY = {
    "FLEET_ANALYST_PASSWORD": "a secret typed once by an operator (cli/analyst.py), never a setting",
    "FLEET_METRICS_DIR_CREATED": "docker/gunicorn.conf.py's own marker across configuration reloads",
}


def test_no_module_reads_a_fleet_variable_behind_configs_back():
    pattern = re.compile(r"""(?:environ(?:\.get)?\s*[\[(]|getenv\s*\()\s*["'](FLEET_\w+|DATABASE_\w+)["']""")
    sources = [
        *ROOT.glob("api/**/*.py"),
        *ROOT.glob("cli/**/*.py"),
        *ROOT.glob("db/**/*.py"),
        *ROOT.glob("jobs/**/*.py"),
    ]
    sources.append(ROOT / "docker" / "gunicorn.conf.py")
    found = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in sources
        # db/migrations/env.py: `alembic upgrade` run by hand takes DATABASE_URL as given; migrations import no
        # app code (db/migrations/README.md).
        if "node_modules" not in path.parts and "migrations" not in path.parts
        for name in pattern.findall(path.read_text())
        if name not in READ_DIRECTLY
    }
    assert found == set(), "read it through config.Settings instead"


def test_gunicorn_settings_parse_strictly():
    assert Settings.from_env({"FLEET_ACCESS_LOG": "off"}).access_log is False
    with pytest.raises(ConfigError, match="FLEET_ACCESS_LOG"):
        Settings.from_env({"FLEET_ACCESS_LOG": "of"})
    with pytest.raises(ConfigError, match="FLEET_WORKERS"):
        Settings.from_env({"FLEET_WORKERS": "0"})
