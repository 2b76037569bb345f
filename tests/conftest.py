"""Test databases: three real TimescaleDB engines, started by the tests themselves.

- native: the machine's PostgreSQL 15 with TimescaleDB 2.28.3 (Community edition) built by
  scripts/provision-native.sh, a throw-away cluster started by pytest-postgresql with
  `shared_preload_libraries=timescaledb`; the default engine for concurrency, load, policies and aggregates;
- native-apache: the same build in a second cluster started with `timescaledb.license=apache`: the Apache edition
  (hypertables only), the edition fallback;
- embedded: PGlite + TimescaleDB Community served by db/embedded/server.mjs under our supervisor.

Every test that (indirectly) uses `engine_kind` runs once per engine. Marker `community` keeps a test on the
Community engines (native and embedded), `apache` on native-apache, `native` on native (a real server, Community),
`embedded` on the embedded engine (its own limits and behaviour).
FLEET_TEST_ENGINES narrows the run (e.g. `FLEET_TEST_ENGINES=native,native-apache`).

Isolation: the embedded engine has one connection and one database, so both engines use the same scheme: one
migrated database per session, and the `clean_db` fixture truncates the platform's tables after a test.

The app under test: `app`, `client` (`app.test_client()`) and `runner` (click's CliRunner), as in flaskr. A module
or test describes its app with the `app` marker, e.g. `pytestmark = pytest.mark.app(role="device",
FLEET_MAX_BATCH="50")`: settings as environment variables, test-only blueprints, the role of the key its clients
send. `make_app(...)` and `make_client(...)` build more apps on the same database, changing what the call names
(`make_app(role=None)`: no key). Plain helpers shared by modules (keys, payload builders, expected analytics) are
in tests/support/; a test module never imports another one (tests/unit/test_test_layout.py).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import port_for
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from pytest_postgresql.executors import PostgreSQLExecutor
from pytest_postgresql.janitor import DatabaseJanitor
from sqlalchemy.engine import Connection, Engine

import db
from db.embedded import supervisor as embedded
from db.migrate import upgrade
from tests.support.api import build_app, with_api_key

ALL_ENGINES = ("native", "native-apache", "embedded")
#: Engines running TimescaleDB's Community edition (continuous aggregates, compression, policies).
COMMUNITY_ENGINES = frozenset({"native", "embedded"})
PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_LIB = Path("/usr/lib/postgresql/15/lib")
NATIVE_DBNAME = "fleet_test"
PG_CTL_AS_POSTGRES = Path(__file__).resolve().parent / "pg_ctl_as_postgres"
#: Server options every native test cluster starts with.
TIMESCALEDB_OPTIONS = "-c shared_preload_libraries=timescaledb -c timescaledb.telemetry_level=off"
#: The same build as the Apache edition: continuous aggregates, compression and policies are refused.
APACHE_OPTIONS = f"{TIMESCALEDB_OPTIONS} -c timescaledb.license=apache"

#: Tables a test may write to; `clean_db` empties them afterwards.
PLATFORM_TABLES = (
    "meter_readings",
    "vehicle_readings",
    "meters_current",
    "vehicles_current",
    "vehicle_meter_mapping",
    "api_keys",
    "ui_sessions",
    "alerts",
    "job_runs",
    "vehicle_correlation_1h",
    "correlation_invalidations",
)


def selected_engines() -> tuple[str, ...]:
    raw = os.environ.get("FLEET_TEST_ENGINES", ",".join(ALL_ENGINES))
    chosen = tuple(e.strip() for e in raw.split(",") if e.strip())
    unknown = set(chosen) - set(ALL_ENGINES)
    if unknown:
        raise pytest.UsageError(f"FLEET_TEST_ENGINES: unknown engines {sorted(unknown)}")
    return chosen


def is_community(engine_kind: str) -> bool:
    """True for the engines that run TimescaleDB's Community edition."""
    return engine_kind in COMMUNITY_ENGINES


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "engine_kind" not in metafunc.fixturenames:
        return
    kinds = list(selected_engines())
    if metafunc.definition.get_closest_marker("community"):
        kinds = [k for k in kinds if k in COMMUNITY_ENGINES]
    if metafunc.definition.get_closest_marker("apache"):
        kinds = [k for k in kinds if k == "native-apache"]
    if metafunc.definition.get_closest_marker("native"):
        kinds = [k for k in kinds if k == "native"]
    if metafunc.definition.get_closest_marker("embedded"):
        kinds = [k for k in kinds if k == "embedded"]
    metafunc.parametrize("engine_kind", kinds, scope="session")


@contextmanager
def _throwaway_cluster(prefix: str, options: str) -> Iterator[PostgreSQLExecutor]:
    if not (PG_BIN / "pg_ctl").exists() or not list(PG_LIB.glob("timescaledb-*.so")):
        pytest.fail("PostgreSQL 15 with TimescaleDB is required: run scripts/provision-native.sh")
    base, pg_ctl = cluster_dir(prefix)
    try:
        with native_executor(base, pg_ctl, NATIVE_DBNAME, options=options) as proc:
            yield proc
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def native_proc() -> Iterator[PostgreSQLExecutor]:
    """A throw-away PostgreSQL 15 cluster with TimescaleDB (Community) preloaded, on a free loopback port.
    TimescaleDB's own background scheduler runs in it, as in production."""
    with _throwaway_cluster("fleet-native-", TIMESCALEDB_OPTIONS) as proc:
        yield proc


@pytest.fixture(scope="session")
def native_apache_proc() -> Iterator[PostgreSQLExecutor]:
    """The same build in its own cluster, started as the Apache edition (`timescaledb.license=apache`)."""
    with _throwaway_cluster("fleet-apache-", APACHE_OPTIONS) as proc:
        yield proc


def proc_of(engine_kind: str, request: pytest.FixtureRequest) -> PostgreSQLExecutor:
    """The running cluster of a native engine kind."""
    return request.getfixturevalue("native_apache_proc" if engine_kind == "native-apache" else "native_proc")


def cluster_dir(prefix: str) -> tuple[Path, str]:
    """A fresh directory for a throw-away cluster (the caller removes it), and the pg_ctl to drive it with.
    PostgreSQL refuses to run as root, and pytest's temp dirs are root-only: as root the directory belongs to the
    postgres system user and pg_ctl runs through a runuser wrapper."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
        return base, str(PG_CTL_AS_POSTGRES)
    return base, str(PG_BIN / "pg_ctl")


def native_executor(base: Path, pg_ctl: str, dbname: str, *, options: str = TIMESCALEDB_OPTIONS) -> PostgreSQLExecutor:
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
        postgres_options=options,
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
    proc = proc_of(engine_kind, request)
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
    hold_timescaledb_jobs(eng)
    yield eng
    eng.dispose()


def hold_timescaledb_jobs(eng: Engine) -> None:
    """On a server with TimescaleDB's own scheduler, push the policies' next start to infinity: a refresh policy
    that fired in the middle of a test would materialise what the test means to read in real time (on PostgreSQL
    15.20 its runs end `Failed`, yet they do materialise). Tests that need a TimescaleDB run ask for one
    (`alter_job(id, next_start => now())`). No-op on Apache and on the embedded engine (no scheduler there)."""
    with eng.begin() as conn:
        apache_or_embedded = sa.text(
            "SELECT current_setting('timescaledb.license') = 'apache' OR version() ILIKE '%emscripten%'"
        )
        if conn.execute(apache_or_embedded).scalar_one():
            return
        conn.execute(
            sa.text(
                "SELECT alter_job(job_id, next_start => 'infinity') FROM timescaledb_information.jobs"
                " WHERE job_id >= 1000"
            )
        )


@pytest.fixture
def db_conn(engine: Engine) -> Iterator[Connection]:
    """A connection inside a transaction that is rolled back after the test: nothing to truncate (STYLE.md
    section 11). For tests that run all their statements on this one connection (not through the app, a
    subprocess or an Engine); a statement expected to fail runs in a savepoint (`db_conn.begin_nested()`), so
    the transaction goes on. One connection, so the embedded engine takes it too."""
    with engine.connect() as conn:
        outer = conn.begin()
        try:
            yield conn
        finally:
            outer.rollback()


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
        conn.execute(sa.text("UPDATE correlation_watermark SET materialized_until = NULL"))
        caggs = conn.execute(sa.text("SELECT view_name FROM timescaledb_information.continuous_aggregates")).scalars()
        for cagg in caggs.all():
            conn.execute(sa.text(f"TRUNCATE {cagg}"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "app(role=None, blueprints=(), **settings_env): the app the `app`, `client`, `make_app` and `make_client`"
        " fixtures build: its settings (as environment variables), test-only blueprints, and the role of the API"
        " key its clients send (no key without one). On a module (`pytestmark`) or a test; the closest one wins.",
    )


# --- the app under test (flaskr's `app`, `client` and `runner`) ---------------------------------------------


def _app_marker(request: pytest.FixtureRequest) -> tuple[str | None, dict[str, Any]]:
    """(role, build_app options) from the closest `app` marker."""
    marker = request.node.get_closest_marker("app")
    options = dict(marker.kwargs) if marker else {}
    if marker and marker.args:
        raise pytest.UsageError("the app marker takes keyword arguments only")
    return options.pop("role", None), options


@pytest.fixture
def make_app(clean_db: Engine, request: pytest.FixtureRequest) -> Callable[..., Flask]:
    """Builds apps on the test's database as its `app` marker says, with the call's changes: another key role
    (`role=None`: clients send no key), a key bound to a device, other settings (`FLEET_RATE_LIMIT="3/minute"`)."""
    marker_role, options = _app_marker(request)

    def make(role: str | None = marker_role, *, device_id: str | None = None, **overrides: Any) -> Flask:
        app = build_app(clean_db, **{**options, **overrides})
        if role is not None:
            with_api_key(app, clean_db, role, device_id)
        return app

    return make


@pytest.fixture
def make_client(make_app: Callable[..., Flask]) -> Callable[..., FlaskClient]:
    """A client of a new app: `make_client(...)` is `make_app(...).test_client()`."""

    def make(*args: Any, **kwargs: Any) -> FlaskClient:
        return make_app(*args, **kwargs).test_client()

    return make


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    """The app under test, as the test's `app` marker describes it (the defaults without one)."""
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner() -> CliRunner:
    """click's runner for the `fleet` CLI (tests.support.cli.cli_env points a command at a database)."""
    return CliRunner()


@pytest.fixture
def both_editions(request: pytest.FixtureRequest) -> Iterator[dict[str, Engine]]:
    """A migrated, empty database on each selected engine, for comparing results across editions: native
    Community against native-apache, and the embedded engine (Community) too when it is selected."""
    selected = selected_engines()
    if "native-apache" not in selected or not COMMUNITY_ENGINES & set(selected):
        pytest.skip("needs native-apache and a Community engine")
    dbname = "fleet_editions"
    with ExitStack() as stack:
        engines: dict[str, Engine] = {}
        for kind in selected:
            if kind == "embedded":
                engines[kind] = make_test_engine(kind, request.getfixturevalue("embedded_engine").database_url)
                stack.callback(truncate_all, engines[kind])
                continue
            proc = proc_of(kind, request)
            stack.enter_context(DatabaseJanitor(user=proc.user, host=proc.host, port=proc.port, dbname=dbname))
            engines[kind] = make_test_engine(kind, native_url(proc, dbname))
        for eng in engines.values():
            stack.callback(eng.dispose)
            upgrade(eng)
            hold_timescaledb_jobs(eng)
        yield engines
