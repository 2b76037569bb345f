"""Migration 0006 and the cluster-wide analyst role: idempotent with an existing role, and a downgrade that never
drops a role another database, a DBA or an analyst login still relies on. Migration 0009: SELECT on `alerts`,
revoked on its downgrade."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from pytest_postgresql.janitor import DatabaseJanitor
from sqlalchemy.engine import Engine

from db.migrate import downgrade, upgrade
from db.roles import ANALYST_ROLE
from tests.conftest import make_test_engine, native_url, proc_of, truncate_all

#: Migration 0006's grants; 0009 adds `alerts`.
RELATIONS = ("meter_readings_1h", "vehicle_readings_1h", "vehicle_energy_1h", "vehicle_meter_mapping")


@pytest.fixture
def second_database(engine: Engine, engine_kind: str, request: pytest.FixtureRequest) -> Iterator[Engine]:
    """Native: another database in the cluster of the session's (migrated) one, so the role is shared with it.
    Embedded: its single database (it has no other); left at head and empty."""
    if engine_kind != "embedded":
        proc = proc_of(engine_kind, request)
        with DatabaseJanitor(user=proc.user, host=proc.host, port=proc.port, dbname="fleet_roles"):
            eng = make_test_engine(engine_kind, native_url(proc, "fleet_roles"))
            yield eng
            eng.dispose()
        return
    yield engine
    upgrade(engine, "head")
    truncate_all(engine)


def _role(eng: Engine) -> dict | None:
    with eng.connect() as conn:
        row = conn.execute(
            sa.text("SELECT rolcanlogin, shobj_description(oid, 'pg_authid') AS mark FROM pg_roles WHERE rolname = :r"),
            {"r": ANALYST_ROLE},
        ).one_or_none()
    return None if row is None else dict(row._mapping)


def _can_select(eng: Engine, relations: tuple[str, ...] = RELATIONS) -> dict[str, bool]:
    with eng.connect() as conn:
        return {
            rel: conn.execute(
                sa.text("SELECT has_table_privilege(CAST(:r AS name), CAST(:rel AS regclass), 'SELECT')"),
                {"r": ANALYST_ROLE, "rel": rel},
            ).scalar_one()
            for rel in relations
        }


def _execute(eng: Engine, statement: str) -> None:
    with eng.begin() as conn:
        conn.execute(sa.text(statement))


def test_migration_0006_grants_on_upgrade_and_revokes_on_downgrade(second_database, engine_kind):
    upgrade(second_database, "head")
    assert _role(second_database) is not None
    assert _can_select(second_database) == dict.fromkeys(RELATIONS, True)

    downgrade(second_database, "0005")
    if engine_kind != "embedded":
        # The session's database in the same cluster still grants to the role: it is kept, without grants here.
        assert _role(second_database) is not None
        assert _can_select(second_database) == dict.fromkeys(RELATIONS, False)
    else:
        # Created by 0006, no members, no privilege left anywhere: dropped.
        assert _role(second_database) is None

    upgrade(second_database, "head")  # the role exists again or still: either way the grants are back
    assert _can_select(second_database) == dict.fromkeys(RELATIONS, True)


def test_migration_0009_grants_select_on_alerts_and_its_downgrade_revokes_only_that(second_database):
    upgrade(second_database, "head")
    assert _can_select(second_database, ("alerts",)) == {"alerts": True}

    downgrade(second_database, "0008")
    assert _can_select(second_database, ("alerts",)) == {"alerts": False}
    assert _can_select(second_database) == dict.fromkeys(RELATIONS, True)  # 0006's grants are not 0009's to take

    upgrade(second_database, "head")
    assert _can_select(second_database, ("alerts",)) == {"alerts": True}


def test_migration_0006_keeps_a_role_with_analyst_logins(second_database):
    upgrade(second_database, "head")
    _execute(second_database, f"CREATE ROLE fleet_test_member NOLOGIN IN ROLE {ANALYST_ROLE}")
    try:
        downgrade(second_database, "0005")
        assert _role(second_database) is not None
    finally:
        _execute(second_database, "DROP ROLE fleet_test_member")
        upgrade(second_database, "head")


@pytest.mark.community  # the embedded engine: a single database, so nothing else in its cluster holds the role
def test_migration_0006_uses_a_role_a_dba_created_and_never_drops_it(engine):
    downgrade(engine, "0005")
    assert _role(engine) is None
    _execute(engine, f"CREATE ROLE {ANALYST_ROLE} NOLOGIN")  # a DBA's, made before the migration ran
    try:
        upgrade(engine, "head")
        assert _role(engine) == {"rolcanlogin": False, "mark": None}  # used as it is, not marked as ours
        assert _can_select(engine) == dict.fromkeys(RELATIONS, True)
        downgrade(engine, "0005")
        assert _role(engine) == {"rolcanlogin": False, "mark": None}  # kept: not ours to drop
    finally:
        _execute(engine, f"DROP ROLE IF EXISTS {ANALYST_ROLE}")
        upgrade(engine, "head")
    assert _role(engine)["mark"].startswith("fleet: read-only analyst group role")
