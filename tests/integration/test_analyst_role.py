"""The read-only analyst role (migrations 0006 and 0009) and `fleet analyst`, on both engines.

- native (PostgreSQL 15, Apache edition): a real LOGIN role made by `fleet analyst grant-login`, authenticated
  with its password (SCRAM; a pg_hba line for that role only), reads the rollups, the mapping and the alerts
  and gets "permission denied" for everything else. That is an enforced boundary.
- embedded (PGlite, Community edition): every connection is superuser `postgres`; there are no logins. The
  grants are still real and are checked the only way that engine allows, `SET ROLE fleet_analyst`, which
  shows that they are sufficient for continuous aggregates with real-time aggregation and deny the rest, but
  a client can `RESET ROLE` at will (a test shows it): on that engine the role documents intent, it enforces
  nothing. `grant-login` refuses to run there.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from pytest_postgresql.executors import PostgreSQLExecutor
from sqlalchemy.engine import Connection, Engine

from cli import main
from db import keys
from db.roles import ANALYST_ROLE
from tests.conftest import is_community
from tests.support.builders import INSERT_MAPPING, INSERT_METER, INSERT_VEHICLE
from tests.support.fleet import refresh_like_policy

#: What the role may read: the rollups and the mapping (0006), the alerts (0009, for Grafana's alert panels).
ANALYST_RELATIONS = {"meter_readings_1h", "vehicle_readings_1h", "vehicle_energy_1h", "vehicle_meter_mapping", "alerts"}
PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
HOUR = timedelta(hours=1)
# Three whole hours up to the current one: on Community the first two are materialised, the current hour is
# served by real-time aggregation from the raw hypertable (which the analyst may not read).
NOW_HOUR = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
START = NOW_HOUR - 2 * HOUR

#: Statements an analyst must be refused, with the relation the refusal names.
DENIED = [
    ("INSERT INTO meter_readings (meter_id, recorded_at, kwh_consumed_ac, voltage) VALUES ('x', now(), 1, 230)",
     "meter_readings"),
    ("INSERT INTO vehicle_readings (vehicle_id, recorded_at, soc, kwh_delivered_dc, battery_temp)"
     " VALUES ('x', now(), 1, 1, 1)", "vehicle_readings"),
    ("SELECT count(*) FROM meter_readings", "meter_readings"),
    ("SELECT count(*) FROM vehicle_readings", "vehicle_readings"),
    ("UPDATE meters_current SET voltage = 0", "meters_current"),
    ("SELECT key_hash FROM api_keys", "api_keys"),
    ("UPDATE vehicle_meter_mapping SET valid_to = now()", "vehicle_meter_mapping"),
    ("DELETE FROM vehicle_meter_mapping", "vehicle_meter_mapping"),
    ("INSERT INTO vehicle_meter_mapping (vehicle_id, meter_id, valid_from) VALUES ('x', 'y', now())",
     "vehicle_meter_mapping"),
    ("UPDATE alerts SET resolved_at = now()", "alerts"),
    ("DELETE FROM alerts", "alerts"),
    ("INSERT INTO alerts (kind, device_type, device_id) VALUES ('silent_device', 'meter', 'x')", "alerts"),
    ("SELECT count(*) FROM job_runs", "job_runs"),
    ("UPDATE retention_settings SET drop_after = INTERVAL '1 day'", "retention_settings"),
]  # fmt: skip


@pytest.fixture
def analyst_data(clean_db: Engine, engine_kind: str) -> Engine:
    """Two meters and vehicles over three hours, mapped, and an open alert; on Community the hours before the
    current one are materialised, the current one is real-time."""
    meters, vehicles = [], []
    for minute in range(150):  # up to 30 minutes into the current hour
        t = START + timedelta(minutes=minute)
        for n in (1, 2):
            meters.append({"id": f"an-m{n}", "t": t, "kwh": 0.15, "v": 230.0})
            vehicles.append({"id": f"an-v{n}", "t": t, "kwh": 0.135, "temp": 25.0, "soc": 50.0})
    with clean_db.begin() as conn:
        conn.execute(INSERT_METER, meters)
        conn.execute(INSERT_VEHICLE, vehicles)
        conn.execute(INSERT_MAPPING, [{"v": f"an-v{n}", "m": f"an-m{n}", "f": START - HOUR, "t": None} for n in (1, 2)])
        conn.execute(
            sa.text("INSERT INTO alerts (kind, device_type, device_id, details) VALUES (:k, :t, :d, '{}')"),
            {"k": "silent_device", "t": "meter", "d": "an-m2"},
        )
    if is_community(engine_kind):
        refresh_like_policy(clean_db, NOW_HOUR)
    return clean_db


def _as_analyst(conn: Connection) -> None:
    # SET LOCAL: undone when the transaction ends, so a pooled connection never goes back to the pool as the
    # analyst.
    conn.execute(sa.text(f"SET LOCAL ROLE {ANALYST_ROLE}"))


def _rows(conn: Connection, relation: str) -> list[tuple]:
    return [tuple(r) for r in conn.execute(sa.text(f"SELECT * FROM {relation} ORDER BY 1, 2"))]


def _privileges(conn: Connection, schema: str) -> set[tuple[str, str]]:
    """(relation, privilege) pairs the analyst role holds on the tables, views and aggregates of `schema`,
    however it holds them (directly, through PUBLIC)."""
    rows = conn.execute(
        sa.text(
            "SELECT c.relname, p.privilege FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " CROSS JOIN unnest(CAST(:privileges AS text[])) AS p(privilege)"
            " WHERE n.nspname = :schema AND c.relkind IN ('r', 'v', 'm', 'p', 'f')"
            " AND has_table_privilege(CAST(:role AS name), c.oid, p.privilege)"
        ),
        {"privileges": list(PRIVILEGES), "schema": schema, "role": ANALYST_ROLE},
    )
    return {(r.relname, r.privilege) for r in rows}


def _granted(conn: Connection, schema: str) -> set[tuple[str, str]]:
    """(relation, privilege) pairs granted to the analyst role itself (its entries in the relations' ACLs)."""
    rows = conn.execute(
        sa.text(
            "SELECT c.relname, a.privilege_type FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " CROSS JOIN aclexplode(c.relacl) a"
            " WHERE n.nspname = :schema AND a.grantee = (SELECT oid FROM pg_roles WHERE rolname = :role)"
        ),
        {"schema": schema, "role": ANALYST_ROLE},
    )
    return {(r.relname, r.privilege_type) for r in rows}


def test_analyst_role_is_a_nologin_group_with_select_on_its_relations_only(engine, engine_kind):
    with engine.connect() as conn:
        role = conn.execute(sa.text("SELECT * FROM pg_roles WHERE rolname = :r"), {"r": ANALYST_ROLE}).mappings().one()
        public = _privileges(conn, "public")
        public_granted = _granted(conn, "public")
        internal = _granted(conn, "_timescaledb_internal")
        materialized = set(
            conn.execute(
                sa.text(
                    "SELECT h.table_name FROM _timescaledb_catalog.hypertable h WHERE h.id IN"
                    " (SELECT mat_hypertable_id FROM _timescaledb_catalog.continuous_agg)"
                    " UNION ALL SELECT c.table_name FROM _timescaledb_catalog.chunk c WHERE c.hypertable_id IN"
                    " (SELECT mat_hypertable_id FROM _timescaledb_catalog.continuous_agg)"
                    " UNION ALL SELECT partial_view_name FROM _timescaledb_catalog.continuous_agg"
                    " UNION ALL SELECT direct_view_name FROM _timescaledb_catalog.continuous_agg"
                )
            ).scalars()
        )
        schema_usage = conn.execute(
            sa.text(
                "SELECT has_schema_privilege(CAST(:r AS name), 'public', 'USAGE'),"
                " has_schema_privilege(CAST(:r AS name), 'public', 'CREATE')"
            ),
            {"r": ANALYST_ROLE},
        ).one()
    assert not any(role[a] for a in ("rolcanlogin", "rolsuper", "rolcreaterole", "rolcreatedb", "rolreplication"))
    assert public == public_granted == {(r, "SELECT") for r in ANALYST_RELATIONS}
    assert tuple(schema_usage) == (True, False)
    # TimescaleDB propagates the aggregates' grant to their own internal objects (Community only; none exist
    # on Apache): the materialization hypertables and their chunks, and the partial and direct views, which
    # compute the same hourly aggregates. SELECT there and nothing else, and nothing at all on raw chunks.
    # (TimescaleDB's own catalog views there are readable by PUBLIC: not our grant, and no fleet data.)
    assert {rel for rel, _ in internal} <= materialized
    assert {priv for _, priv in internal} <= {"SELECT"}
    if not is_community(engine_kind):
        assert not materialized and not internal


def test_analyst_role_reads_every_relation_with_the_same_rows_as_the_owner(analyst_data, engine_kind):
    with analyst_data.connect() as conn:
        as_owner = {rel: _rows(conn, rel) for rel in sorted(ANALYST_RELATIONS)}
        _as_analyst(conn)
        assert conn.execute(sa.text("SELECT current_user")).scalar_one() == ANALYST_ROLE
        as_analyst = {rel: _rows(conn, rel) for rel in sorted(ANALYST_RELATIONS)}
        hours = conn.execute(
            sa.text("SELECT bucket, sum(reading_count) FROM meter_readings_1h GROUP BY bucket ORDER BY bucket")
        ).all()
        conn.rollback()
    assert as_analyst == as_owner
    assert all(as_analyst.values())
    # The current hour comes from raw history through real-time aggregation (Community) or the plain view
    # (Apache), although the analyst cannot read the raw hypertables themselves.
    assert [(h[0], h[1]) for h in hours] == [(START, 120), (START + HOUR, 120), (NOW_HOUR, 60)]


@pytest.mark.parametrize(("statement", "relation"), DENIED, ids=[f"{i}-{r}" for i, (_, r) in enumerate(DENIED)])
def test_analyst_role_is_refused(engine, statement, relation):
    with engine.connect() as conn:
        _as_analyst(conn)
        with pytest.raises(sa.exc.ProgrammingError, match=f"permission denied for table {relation}"):
            conn.execute(sa.text(statement))
        conn.rollback()


@pytest.mark.community  # the embedded engine (the only Community engine we can run)
def test_analyst_role_on_the_embedded_engine_is_not_a_boundary(engine):
    # What docs/SECURITY.md says: SET ROLE applies the grants, but the session user is superuser postgres and
    # any client may reset the role. Nothing on this engine can stop a client from reading api_keys.
    with engine.connect() as conn:
        _as_analyst(conn)
        with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
            conn.execute(sa.text("SELECT count(*) FROM api_keys"))
        conn.rollback()
        keys.create_key(conn, "read by a reset role", "read")  # a row the analyst must not see, and will
        _as_analyst(conn)
        conn.execute(sa.text("RESET ROLE"))
        assert "read by a reset role" in conn.execute(sa.text("SELECT name FROM api_keys")).scalars().all()
        who = conn.execute(
            sa.text("SELECT session_user, current_user, usesuper FROM pg_user WHERE usename = session_user")
        )
        assert tuple(who.one()) == ("postgres", "postgres", True)
        conn.rollback()


@pytest.mark.embedded
def test_analyst_grant_login_refuses_the_embedded_engine(runner, engine):
    url = engine.url.render_as_string(hide_password=False)
    env = {"DATABASE_URL": url, "FLEET_ANALYST_PASSWORD": "correct horse battery staple"}
    result = runner.invoke(main, ["analyst", "grant-login", "alice"], env=env)
    assert result.exit_code == 1
    assert "embedded engine has no logins" in result.output
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM pg_roles WHERE rolname = 'alice'")).scalar_one() == 0


# --- native: real logins -------------------------------------------------------------------------------------

LOGIN = "fleet_test_analyst"
PASSWORD = "s3cret-Analyst-passw0rd"
# Cleanup for a test that failed before `fleet analyst revoke-login` dropped the login.
DROP_LOGIN = f"""
DO $$ BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{LOGIN}') THEN
        EXECUTE format('REVOKE ALL ON DATABASE %I FROM {LOGIN}', current_database());
        DROP ROLE {LOGIN};
    END IF;
END $$
"""


@pytest.fixture
def scram_login(engine: Engine, native_proc: PostgreSQLExecutor) -> Iterator[str]:
    """pg_hba asks LOGIN for its password (the test cluster trusts everyone else); the role is dropped after."""
    hba = Path(native_proc.datadir) / "pg_hba.conf"
    original = hba.read_text()
    hba.write_text(f"host all {LOGIN} 127.0.0.1/32 scram-sha-256\n{original}")
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT pg_reload_conf()"))
        conn.commit()
    try:
        yield LOGIN
    finally:
        hba.write_text(original)
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_reload_conf()"))
            conn.execute(sa.text(DROP_LOGIN))
            conn.commit()


def _connect(proc: PostgreSQLExecutor, dbname: str, password: str) -> psycopg.Connection:
    return psycopg.connect(
        host="127.0.0.1", port=proc.port, dbname=dbname, user=LOGIN, password=password, connect_timeout=10
    )


@pytest.mark.native
def test_analyst_login_reads_rollups_and_is_refused_everything_else(runner, analyst_data, scram_login, native_proc):
    url = analyst_data.url.render_as_string(hide_password=False)
    dbname = analyst_data.url.database
    result = runner.invoke(
        main,
        ["analyst", "grant-login", LOGIN, "--json", "--statement-timeout", "60"],
        env={"DATABASE_URL": url, "FLEET_ANALYST_PASSWORD": PASSWORD},
    )
    assert result.exit_code == 0, result.output
    assert PASSWORD not in result.output
    created = json.loads(result.output)
    assert (created["name"], created["created"], created["can_login"]) == (LOGIN, True, True)
    assert (created["connection_limit"], created["statement_timeout"]) == (5, "60s")

    with analyst_data.connect() as conn:
        stored = conn.execute(sa.text("SELECT rolpassword FROM pg_authid WHERE rolname = :r"), {"r": LOGIN}).scalar()
    assert stored.startswith("SCRAM-SHA-256$") and PASSWORD not in stored

    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        _connect(native_proc, dbname, "not-the-password").close()

    with _connect(native_proc, dbname, PASSWORD) as analyst:
        assert analyst.execute("SHOW statement_timeout").fetchone() == ("1min",)
        for relation in sorted(ANALYST_RELATIONS):
            assert analyst.execute(f"SELECT count(*) FROM {relation}").fetchone()[0] > 0, relation
        analyst.rollback()
        for statement, relation in DENIED:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match=f"permission denied for table {relation}"):
                analyst.execute(statement)
            analyst.rollback()
        # Membership does not let the login become the owner, create objects or raise its own limits.
        for statement in (
            "SET ROLE postgres",
            "CREATE TABLE public.mine (x int)",
            f"ALTER ROLE {LOGIN} CONNECTION LIMIT -1",
            f"GRANT {ANALYST_ROLE} TO {LOGIN}",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                analyst.execute(statement)
            analyst.rollback()

    listed = runner.invoke(main, ["analyst", "list", "--json"], env={"DATABASE_URL": url})
    assert listed.exit_code == 0, listed.output
    assert LOGIN in [x["name"] for x in json.loads(listed.output)["logins"]]

    # A second grant-login rotates the password (read from stdin this time): the old one stops working.
    new_password = "an0ther-l0ng-password"
    rotated = runner.invoke(
        main, ["analyst", "grant-login", LOGIN], env={"DATABASE_URL": url}, input=new_password + "\n"
    )
    assert rotated.exit_code == 0, rotated.output
    assert "updated" in rotated.output and new_password not in rotated.output
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        _connect(native_proc, dbname, PASSWORD).close()
    held = _connect(native_proc, dbname, new_password)

    revoked = runner.invoke(main, ["analyst", "revoke-login", LOGIN, "--json"], env={"DATABASE_URL": url})
    assert revoked.exit_code == 0, revoked.output
    outcome = json.loads(revoked.output)
    assert outcome["dropped"] is True and outcome["sessions_ended"] >= 1  # `held`, at least
    with pytest.raises(psycopg.OperationalError):
        held.execute("SELECT 1")
    held.close()
    with pytest.raises(psycopg.OperationalError):
        _connect(native_proc, dbname, new_password).close()


@pytest.mark.native
@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("Alice", "lower-case"),
        ("bob; DROP TABLE api_keys", "lower-case"),
        ("pg_monitor", "reserved"),
        (ANALYST_ROLE, "reserved"),
        ("postgres", "reserved"),
    ],
)
def test_analyst_grant_login_refuses_bad_names(runner, engine, name, message):
    env = {"DATABASE_URL": engine.url.render_as_string(hide_password=False), "FLEET_ANALYST_PASSWORD": PASSWORD}
    result = runner.invoke(main, ["analyst", "grant-login", name], env=env)
    assert result.exit_code == 2
    assert message in result.output


@pytest.mark.native
def test_analyst_grant_login_refuses_short_passwords_and_roles_that_are_not_analyst_logins(runner, engine):
    env = {"DATABASE_URL": engine.url.render_as_string(hide_password=False)}
    short = runner.invoke(main, ["analyst", "grant-login", "fleet_test_short"], env=env, input="short\n")
    assert short.exit_code == 1 and "12 to 1024 characters" in short.output
    # An existing role that is not a member of the analyst group (an application's role, say) is never touched.
    with engine.connect() as conn:
        conn.execute(sa.text("CREATE ROLE fleet_test_app NOLOGIN"))
        conn.commit()
    try:
        existing = runner.invoke(
            main, ["analyst", "grant-login", "fleet_test_app"], env={**env, "FLEET_ANALYST_PASSWORD": PASSWORD}
        )
        with engine.connect() as conn:
            role = conn.execute(
                sa.text("SELECT rolcanlogin, rolpassword FROM pg_authid WHERE rolname = 'fleet_test_app'")
            )
            assert tuple(role.one()) == (False, None)
    finally:
        with engine.connect() as conn:
            conn.execute(sa.text("DROP ROLE fleet_test_app"))
            conn.commit()
    assert existing.exit_code == 1
    assert "exists and is not an analyst login" in existing.output
    revoke = runner.invoke(main, ["analyst", "revoke-login", "fleet_test_nobody"], env=env)
    assert revoke.exit_code == 1 and "does not exist" in revoke.output
