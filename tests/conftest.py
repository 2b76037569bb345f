"""Test databases: both real TimescaleDB engines, started by the tests themselves.

- native: the machine's PostgreSQL 15 with TimescaleDB (Apache edition) built by scripts/provision-native.sh,
  a throw-away cluster started by pytest-postgresql with `shared_preload_libraries=timescaledb`;
- embedded: PGlite + TimescaleDB Community served by db/embedded/server.mjs under our supervisor.

Every test that (indirectly) uses `engine_kind` runs once per engine. Marker `community` keeps a test on the
embedded engine (Community features), markers `apache` and `native` on the native one. FLEET_TEST_ENGINES narrows the
run (e.g. `FLEET_TEST_ENGINES=native`).

Isolation: the embedded engine has one connection and one database, so both engines use the same scheme: one
migrated database per session, and the `clean_db` fixture truncates the platform's tables after a test.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import port_for
import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from pytest_postgresql.executors import PostgreSQLExecutor
from pytest_postgresql.janitor import DatabaseJanitor
from sqlalchemy.engine import Engine

import db
from db import keys
from db.migrate import upgrade
from jobs import engine as embedded

ALL_ENGINES = ("native", "embedded")
PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_LIB = Path("/usr/lib/postgresql/15/lib")
NATIVE_DBNAME = "fleet_test"
PG_CTL_AS_POSTGRES = Path(__file__).resolve().parent / "pg_ctl_as_postgres"
#: Server options every native test cluster starts with.
TIMESCALEDB_OPTIONS = "-c shared_preload_libraries=timescaledb -c timescaledb.telemetry_level=off"

#: Tables a test may write to; `clean_db` empties them afterwards.
PLATFORM_TABLES = (
    "meter_readings",
    "vehicle_readings",
    "meters_current",
    "vehicles_current",
    "vehicle_meter_mapping",
    "api_keys",
    "alerts",
    "job_runs",
)


def selected_engines() -> tuple[str, ...]:
    raw = os.environ.get("FLEET_TEST_ENGINES", ",".join(ALL_ENGINES))
    chosen = tuple(e.strip() for e in raw.split(",") if e.strip())
    unknown = set(chosen) - set(ALL_ENGINES)
    if unknown:
        raise pytest.UsageError(f"FLEET_TEST_ENGINES: unknown engines {sorted(unknown)}")
    return chosen


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "engine_kind" not in metafunc.fixturenames:
        return
    kinds = list(selected_engines())
    if metafunc.definition.get_closest_marker("community"):
        kinds = [k for k in kinds if k == "embedded"]
    if metafunc.definition.get_closest_marker("apache") or metafunc.definition.get_closest_marker("native"):
        kinds = [k for k in kinds if k == "native"]
    metafunc.parametrize("engine_kind", kinds, scope="session")


@pytest.fixture(scope="session")
def native_proc() -> Iterator[PostgreSQLExecutor]:
    """A throw-away PostgreSQL 15 cluster with TimescaleDB preloaded, on a free loopback port."""
    if not (PG_BIN / "pg_ctl").exists() or not list(PG_LIB.glob("timescaledb-*.so")):
        pytest.fail("PostgreSQL 15 with TimescaleDB is required: run scripts/provision-native.sh")
    base, pg_ctl = cluster_dir("fleet-native-")
    try:
        with native_executor(base, pg_ctl, NATIVE_DBNAME) as proc:
            yield proc
    finally:
        shutil.rmtree(base, ignore_errors=True)


def cluster_dir(prefix: str) -> tuple[Path, str]:
    """A fresh directory for a throw-away cluster (the caller removes it), and the pg_ctl to drive it with.
    PostgreSQL refuses to run as root, and pytest's temp dirs are root-only: as root the directory belongs to the
    postgres system user and pg_ctl runs through a runuser wrapper."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
        return base, str(PG_CTL_AS_POSTGRES)
    return base, str(PG_BIN / "pg_ctl")


def native_executor(base: Path, pg_ctl: str, dbname: str) -> PostgreSQLExecutor:
    """A PostgreSQL 15 cluster with TimescaleDB preloaded in `base`, on a free loopback port (not started)."""
    return PostgreSQLExecutor(
        executable=pg_ctl,
        host="127.0.0.1",
        port=port_for.select_random(),
        datadir=str(base / "data"),
        unixsocketdir=str(base),
        logfile=str(base / "postgresql.log"),
        startparams="-w",
        dbname=dbname,
        postgres_options=TIMESCALEDB_OPTIONS,
    )


@pytest.fixture(scope="session")
def embedded_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[embedded.EngineConfig]:
    """A supervised embedded engine on free loopback ports, with its own data directory."""
    if shutil.which("node") is None:
        pytest.fail("Node.js is required for the embedded engine (the README's test command installs it)")
    port, health_port = port_for.select_random(), port_for.select_random()
    cfg = embedded.EngineConfig(tmp_path_factory.mktemp("embedded"), port=port, health_port=health_port)
    embedded.start(cfg, timeout=180)
    yield cfg
    embedded.stop(cfg)


def native_url(proc: PostgreSQLExecutor, dbname: str) -> str:
    return f"postgresql+psycopg://{proc.user}@{proc.host}:{proc.port}/{dbname}"


@pytest.fixture(scope="session")
def database_url(engine_kind: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """An empty database on the engine under test, with the timescaledb extension available."""
    if engine_kind == "embedded":
        cfg: embedded.EngineConfig = request.getfixturevalue("embedded_engine")
        yield cfg.database_url
        return
    proc: PostgreSQLExecutor = request.getfixturevalue("native_proc")
    with DatabaseJanitor(user=proc.user, host=proc.host, port=proc.port, dbname=NATIVE_DBNAME):
        yield native_url(proc, NATIVE_DBNAME)


def make_test_engine(engine_kind: str, url: str) -> Engine:
    # Embedded: no pooled idle connection, or every other client (alembic, subprocesses) would be locked out.
    return db.make_engine(url, pool_size=0 if engine_kind == "embedded" else 5, connect_timeout=60)


@pytest.fixture(scope="session")
def engine(engine_kind: str, database_url: str) -> Iterator[Engine]:
    """An Engine on a database migrated to head."""
    eng = make_test_engine(engine_kind, database_url)
    upgrade(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def clean_db(engine: Engine) -> Iterator[Engine]:
    """The migrated engine; the platform's tables and materialised rollups are emptied after the test."""
    yield engine
    truncate_all(engine)


def truncate_all(eng: Engine) -> None:
    """Empty the platform's tables, and the continuous aggregates' materialised rows where they exist
    (TRUNCATE of a hypertable does not reach its aggregates)."""
    with eng.begin() as conn:
        conn.execute(sa.text(f"TRUNCATE {', '.join(PLATFORM_TABLES)}"))
        caggs = conn.execute(sa.text("SELECT view_name FROM timescaledb_information.continuous_aggregates")).scalars()
        for cagg in caggs.all():
            conn.execute(sa.text(f"TRUNCATE {cagg}"))


def with_api_key(app: Flask, eng: Engine, role: str = "admin", device_id: str | None = None) -> str:
    """Create an API key and make every test client of `app` send it; returns the key."""
    with eng.begin() as conn:
        plaintext = keys.create_key(conn, f"test-{role}", role, device_id)[1]

    class KeyedClient(FlaskClient):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.environ_base["HTTP_X_API_KEY"] = plaintext

    app.test_client_class = KeyedClient
    return plaintext


@pytest.fixture
def both_editions(request: pytest.FixtureRequest) -> Iterator[dict[str, Engine]]:
    """A migrated, empty database on each engine, for comparing results across editions."""
    if set(selected_engines()) != {"native", "embedded"}:
        pytest.skip("needs both engines")
    proc = request.getfixturevalue("native_proc")
    cfg = request.getfixturevalue("embedded_engine")
    with DatabaseJanitor(user=proc.user, host=proc.host, port=proc.port, dbname="fleet_editions"):
        engines = {
            "native": make_test_engine("native", native_url(proc, "fleet_editions")),
            "embedded": make_test_engine("embedded", cfg.database_url),
        }
        for eng in engines.values():
            upgrade(eng)
        yield engines
        truncate_all(engines["embedded"])
        for eng in engines.values():
            eng.dispose()
