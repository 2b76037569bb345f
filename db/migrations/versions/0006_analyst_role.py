"""Read-only analyst group role `fleet_analyst`: SELECT on the hourly rollups, the energy view and the mapping

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28

Why: analysts query the rollups with SQL (docs/ANALYSTS.md) and must not be able to write history, move a
vehicle to another meter, read API key hashes or see the scheduler's and alerts' internals. A NOLOGIN group
role holds exactly the grants they need; each analyst gets a LOGIN role that is a member of it
(`fleet analyst grant-login NAME`), so a person can be removed without touching the grants.

Grants, and why they are enough (measured, see tests/integration/test_analyst_role.py):
- Apache edition: the rollups are plain views; PostgreSQL checks the tables a view reads with the privileges
  of the view's owner (the migrating user), so SELECT on the views is all an analyst needs, and the raw
  hypertables stay closed to them.
- Community edition: the rollups are continuous aggregates. Their real-time part reads the raw hypertable,
  and their materialised part the materialization hypertable, both through the aggregate's view, so again
  with its owner's privileges: with TimescaleDB 2.23 SELECT on the aggregate is enough even after SELECT on
  the materialization hypertable is revoked, and the raw hypertables stay closed. TimescaleDB also
  propagates a GRANT (and REVOKE) on an aggregate to its internal objects (the materialization hypertable
  and its chunks, the partial and direct views: the same hourly aggregates), so a version that checks those
  is covered too. No security_barrier is needed: the views hide no rows, they aggregate them, and a
  predicate pushed into them sees only grouping columns (device id, hour) that the rows show anyway.
- `vehicle_meter_mapping` is a table: SELECT only (an analyst joins it to find which meter fed a vehicle).
- USAGE on schema public, which PostgreSQL 15 gives PUBLIC anyway, so the role keeps working in a database
  where a DBA revoked it from PUBLIC.
Not granted: raw history (`meter_readings`, `vehicle_readings`: 28.8M rows a day, kept 90 days; analysts
use the rollups), current state, `api_keys` (hashes and device bindings), `alerts`, `job_runs`,
`retention_settings`. Any write privilege.

Roles are cluster-wide, databases are not: the role is created only if it does not exist (a DBA may have
created it, or another fleet database in the same cluster did), and a migrating user without CREATEROLE can
run this migration once a DBA has created the role. A role this migration created is marked with a comment;
the downgrade revokes this database's grants and drops the role only if it carries that mark, has no members
(analyst logins) and holds no privilege in any database any more, so it never breaks another database or a
DBA's setup.

Cost: catalog changes only (no table is read or rewritten); well under a second on both editions.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

ANALYST_ROLE = "fleet_analyst"
#: The relations analysts may read (docs/ANALYSTS.md documents their columns).
ANALYST_RELATIONS = ("meter_readings_1h", "vehicle_readings_1h", "vehicle_energy_1h", "vehicle_meter_mapping")
#: Marks a role this migration created (pg_shdescription), so the downgrade drops only such a role.
CREATED_MARK = "fleet: read-only analyst group role, created by migration 0006"

_RELATIONS_SQL = ", ".join(ANALYST_RELATIONS)

CREATE_ROLE = f"""
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ANALYST_ROLE}') THEN
        BEGIN
            CREATE ROLE {ANALYST_ROLE} NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
            COMMENT ON ROLE {ANALYST_ROLE} IS '{CREATED_MARK}';
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;  -- created meanwhile by the migration of another database in the same cluster
        END;
    END IF;
END
$$
"""
GRANTS = (
    f"GRANT USAGE ON SCHEMA public TO {ANALYST_ROLE}",
    f"GRANT SELECT ON {_RELATIONS_SQL} TO {ANALYST_ROLE}",
)

DOWNGRADE = f"""
DO $$
DECLARE
    analyst oid := (SELECT oid FROM pg_roles WHERE rolname = '{ANALYST_ROLE}');
BEGIN
    IF analyst IS NULL THEN
        RETURN;  -- dropped by hand: nothing of ours is left to revoke
    END IF;
    REVOKE SELECT ON {_RELATIONS_SQL} FROM {ANALYST_ROLE};
    REVOKE USAGE ON SCHEMA public FROM {ANALYST_ROLE};
    IF shobj_description(analyst, 'pg_authid') IS DISTINCT FROM '{CREATED_MARK}' THEN
        RAISE NOTICE 'role {ANALYST_ROLE} was not created by migration 0006: kept';
    ELSIF EXISTS (SELECT FROM pg_auth_members WHERE roleid = analyst) THEN
        RAISE NOTICE 'role {ANALYST_ROLE} has members (analyst logins): kept';
    ELSIF EXISTS (SELECT FROM pg_shdepend WHERE refclassid = 'pg_authid'::regclass AND refobjid = analyst) THEN
        RAISE NOTICE 'role {ANALYST_ROLE} still holds privileges (in this or another database): kept';
    ELSE
        DROP ROLE {ANALYST_ROLE};
    END IF;
END
$$
"""


def upgrade() -> None:
    op.execute(sa.text(CREATE_ROLE))
    for grant in GRANTS:
        op.execute(sa.text(grant))


def downgrade() -> None:
    op.execute(sa.text(DOWNGRADE))
