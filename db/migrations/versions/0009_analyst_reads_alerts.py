"""The analyst group role `fleet_analyst` may read `alerts`

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03

Why: the Grafana dashboard (docker/grafana/, docs/ANALYSTS.md) logs in as an analyst login and shows the open
alerts by kind and in a table; analysts asked for the same in SQL. `alerts` holds what the alert scans found:
kind, device type and id, when an alert opened, was last confirmed and resolved, and the measurements behind it
(efficiency, match rate, minutes silent; for `policy_failed`, the job's name and last error). No key, hash,
password or reading beyond those aggregates: nothing an analyst cannot already work out from the rollups.
Migration 0006 kept it closed only because nobody needed it then.

What: SELECT on `alerts` to `fleet_analyst`, nothing else. `api_keys`, `job_runs`, `retention_settings`, the
raw hypertables and current state stay closed, and no write privilege is granted (an analyst cannot resolve or
delete an alert). Migration 0006 created the role (or found a DBA's) in every database it ran in, so the role
exists here; should someone have dropped it by hand since, the GRANT fails and says so rather than leaving
Grafana's alert panels silently empty.

Cost: one catalog change (`alerts` is neither read nor rewritten, its lock is held for an instant); well under
a second on both editions.

Downgrade: revokes exactly that grant, and does nothing if the role is gone (as 0006's downgrade). The role
itself is 0006's to keep or drop: with this grant revoked, 0006's downgrade still finds no privilege of ours
left in this database.
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

#: The group role of migration 0006 (migrations import no app code: the name is spelled out there and in
#: db/roles.py too).
ANALYST_ROLE = "fleet_analyst"

GRANT = f"GRANT SELECT ON alerts TO {ANALYST_ROLE}"

DOWNGRADE = f"""
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{ANALYST_ROLE}') THEN
        REVOKE SELECT ON alerts FROM {ANALYST_ROLE};
    END IF;
END
$$
"""


def upgrade() -> None:
    op.execute(sa.text(GRANT))


def downgrade() -> None:
    op.execute(sa.text(DOWNGRADE))
