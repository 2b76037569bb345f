"""Migrations on both engines: full round trip, data kept across 0001 -> head -> 0001, no drift."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from pytest_postgresql.janitor import DatabaseJanitor
from sqlalchemy.engine import Engine

from db import migrate
from db.migrate import downgrade, upgrade
from tests.conftest import PLATFORM_TABLES, is_community, make_test_engine, native_url, proc_of, truncate_all

ROLLUP_VIEWS = {"meter_readings_1h", "vehicle_readings_1h", "vehicle_energy_1h"}


@pytest.fixture
def migration_engine(engine_kind: str, request: pytest.FixtureRequest) -> Iterator[Engine]:
    """A database the test may migrate freely; it is left at head and empty."""
    if engine_kind != "embedded":
        proc = proc_of(engine_kind, request)
        dbname = "fleet_migrations"
        with DatabaseJanitor(user=proc.user, host=proc.host, port=proc.port, dbname=dbname):
            eng = make_test_engine(engine_kind, native_url(proc, dbname))
            if is_community(engine_kind):
                _stop_timescaledb_scheduler(eng)
            yield eng
            eng.dispose()
        return
    # The embedded engine has a single database: migrate the session's own, and leave it as found.
    eng = request.getfixturevalue("engine")
    yield eng
    upgrade(eng, "head")
    truncate_all(eng)


def _stop_timescaledb_scheduler(eng: Engine) -> None:
    """No TimescaleDB job runs in this database while the tests migrate it. The policies a migration registers
    start at once, and a refresh job running while a downgrade dropped its continuous aggregate failed the DROP
    with "tuple concurrently deleted" (a catalog race between the job's worker and the DROP). These tests are about
    migrations; test_policy_runs.py is about the jobs."""
    with eng.connect() as conn:
        conn.execute(sa.text("CREATE EXTENSION IF NOT EXISTS timescaledb"))
        conn.execute(sa.text("SELECT _timescaledb_functions.stop_background_workers()"))
        conn.commit()


def _relations(eng: Engine) -> set[str]:
    with eng.connect() as conn:
        insp = sa.inspect(conn)
        return set(insp.get_table_names()) | set(insp.get_view_names()) | set(insp.get_materialized_view_names())


def _revision(eng: Engine) -> str | None:
    with eng.connect() as conn:
        exists = conn.execute(sa.text("SELECT to_regclass('alembic_version') IS NOT NULL")).scalar_one()
        return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() if exists else None


def _policy_jobs(eng: Engine) -> int:
    with eng.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT count(*) FROM timescaledb_information.jobs"
                " WHERE proc_name LIKE 'policy%' AND hypertable_name IS NOT NULL"
            )
        ).scalar_one()


def test_migrations_upgrade_downgrade_upgrade(migration_engine, engine_kind):
    upgrade(migration_engine, "head")
    assert _revision(migration_engine) == migrate.head_revision()
    assert set(PLATFORM_TABLES) | ROLLUP_VIEWS <= _relations(migration_engine)
    # Community: refresh + retention on each rollup, compression + retention on each raw table.
    expected_jobs = 8 if is_community(engine_kind) else 0
    assert _policy_jobs(migration_engine) == expected_jobs

    downgrade(migration_engine, "base")
    assert _revision(migration_engine) is None
    assert not (set(PLATFORM_TABLES) | ROLLUP_VIEWS) & _relations(migration_engine)
    assert _policy_jobs(migration_engine) == 0

    upgrade(migration_engine, "head")
    assert _revision(migration_engine) == migrate.head_revision()
    assert set(PLATFORM_TABLES) | ROLLUP_VIEWS <= _relations(migration_engine)
    assert _policy_jobs(migration_engine) == expected_jobs


def test_migrations_rollups_see_rows_written_before_them(migration_engine):
    downgrade(migration_engine, "base")
    upgrade(migration_engine, "0001")
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=2)
    rows = [{"m": "m-mig", "t": start + timedelta(minutes=i), "k": 0.25} for i in range(90)]
    with migration_engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO meter_readings (meter_id, recorded_at, kwh_consumed_ac, voltage) VALUES (:m, :t, :k, 231)"
            ),
            rows,
        )

    upgrade(migration_engine, "head")
    # Nothing is materialised yet: on Community the real-time part of the aggregate serves it; on Apache
    # the rollup is a view over the hypertable. Either way the rows written before 0002 are counted.
    with migration_engine.connect() as conn:
        hours = conn.execute(
            sa.text(
                "SELECT bucket, kwh_consumed_ac, reading_count FROM meter_readings_1h"
                " WHERE meter_id = 'm-mig' ORDER BY bucket"
            )
        ).all()
    assert [(h.bucket, h.kwh_consumed_ac, h.reading_count) for h in hours] == [
        (start, 15.0, 60),
        (start + timedelta(hours=1), 7.5, 30),
    ]

    downgrade(migration_engine, "0001")
    assert not ROLLUP_VIEWS & _relations(migration_engine)
    with migration_engine.connect() as conn:
        kept = conn.execute(sa.text("SELECT count(*) FROM meter_readings WHERE meter_id = 'm-mig'")).scalar_one()
    assert kept == 90


def test_migrations_schema_matches_metadata(engine):
    # `alembic check` raises when db/schema.py and the migrated database differ.
    migrate.check(engine)
