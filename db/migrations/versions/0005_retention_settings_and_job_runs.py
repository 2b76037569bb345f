"""Retention settings for the project's own retention job, and a record of each scheduled job's last run

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26

Why: on the Apache edition TimescaleDB has no retention policy, so `fleet jobs run` drops expired chunks itself
(`drop_chunks`); `retention_settings` says how long each raw hypertable keeps its history (seeded with the same
90 days as the Community policy of 0002, changed with `fleet policies set`). On Community the TimescaleDB
policies stay the single source of truth and this table stays empty. `job_runs` holds one row per scheduled
job (the Apache retention job, alert evaluation, and on an engine without TimescaleDB background workers the
policies themselves): when it last started and finished, its result and error, and a lease. The scheduler
claims a due run by a conditional UPDATE of that row, which is what keeps two `fleet jobs run` copies from
running the same due job twice (see jobs/scheduler.py); `fleet policies show` reads it back.

Cost: two new small tables (two rows, and one row per job); no lock on live tables. Runs in well under a
second on both editions.
"""

from datetime import timedelta

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# Same values as migration 0002 and db.schema (migrations import no app code).
RAW_TABLES = ("meter_readings", "vehicle_readings")
RAW_RETENTION = timedelta(days=90)
JOB_RESULTS = ("running", "succeeded", "failed")


def _community() -> bool:
    license_ = op.get_bind().execute(sa.text("SELECT current_setting('timescaledb.license')")).scalar_one()
    return license_ == "timescale"


def upgrade() -> None:
    op.create_table(
        "retention_settings",
        sa.Column("hypertable_name", sa.Text, nullable=False),
        sa.Column("drop_after", sa.Interval, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("hypertable_name", name="retention_settings_pkey"),
        sa.CheckConstraint(f"hypertable_name IN {RAW_TABLES!r}", name=op.f("retention_settings_hypertable_name_check")),
        sa.CheckConstraint("drop_after > INTERVAL '0'", name=op.f("retention_settings_drop_after_positive_check")),
    )
    op.create_table(
        "job_runs",
        sa.Column("job_name", sa.Text, nullable=False),
        sa.Column("holder", sa.Text, nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("result", sa.Text, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("stats", postgresql.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("run_count", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("failure_count", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.PrimaryKeyConstraint("job_name", name="job_runs_pkey"),
        sa.CheckConstraint(f"result IN {JOB_RESULTS!r}", name=op.f("job_runs_result_check")),
    )
    if not _community():
        retention = sa.table(
            "retention_settings", sa.column("hypertable_name", sa.Text), sa.column("drop_after", sa.Interval)
        )
        op.bulk_insert(retention, [{"hypertable_name": t, "drop_after": RAW_RETENTION} for t in RAW_TABLES])


def downgrade() -> None:
    op.drop_table("job_runs")
    op.drop_table("retention_settings")
