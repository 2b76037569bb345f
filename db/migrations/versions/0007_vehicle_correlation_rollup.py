"""Hourly correlation rollup per vehicle, its invalidation log and watermark

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03

Why: the analytics report's `correlation` block and the `correlation_lost` alerts paired every vehicle reading
with its meter's nearest reading on every call, from raw history (1.2M rows an hour of the fleet). On the Community
edition closed hours now come from `vehicle_correlation_1h`, kept by `fleet jobs run` (db/correlation.py): per
vehicle and hour the reading counts and the sorted offsets, so a median over any window is exact and identical to
the one computed from raw readings (the Apache path, and the hours not yet materialised). A continuous aggregate
cannot hold it: it pairs two hypertables through the mapping.

`correlation_invalidations` lists materialised hours whose inputs changed (late readings, re-maps into the past);
the ingest statement and re-maps write it, the refresh empties it. `correlation_watermark` says up to where the
rollup is complete; a refresh that has never run leaves it NULL and everything is read from raw.

The tables exist on both editions (the ingest statement is the same everywhere); only the Community edition
maintains them. Cost: three new empty tables; no lock on live tables. Under a second.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

DEVICE_ID_MAX_LENGTH = 64  # as db.schema (migrations import no app code)
CHUNK_INTERVAL = "30 days"


def upgrade() -> None:
    op.create_table(
        "vehicle_correlation_1h",
        sa.Column("vehicle_id", sa.Text, nullable=False),
        sa.Column("bucket", sa.DateTime(timezone=True), nullable=False),
        sa.Column("vehicle_readings", sa.Integer, nullable=False),
        sa.Column("mapped_readings", sa.Integer, nullable=False),
        sa.Column("matched_readings", sa.Integer, nullable=False),
        sa.Column("offsets", postgresql.ARRAY(sa.Float(precision=53)), nullable=False),
        sa.PrimaryKeyConstraint("vehicle_id", "bucket", name="vehicle_correlation_1h_pkey"),
    )
    op.execute(
        "SELECT create_hypertable('vehicle_correlation_1h',"
        f" by_range('bucket', INTERVAL '{CHUNK_INTERVAL}'), create_default_indexes => false)"
    )
    op.create_table(
        "correlation_invalidations",
        sa.Column("vehicle_id", sa.Text, nullable=False),
        sa.Column("bucket", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("vehicle_id", "bucket", name="correlation_invalidations_pkey"),
    )
    op.create_table(
        "correlation_watermark",
        sa.Column("id", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("materialized_until", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="correlation_watermark_pkey"),
        sa.CheckConstraint("id", name=op.f("correlation_watermark_single_row_check")),
    )
    op.execute("INSERT INTO correlation_watermark (id, materialized_until) VALUES (true, NULL)")


def downgrade() -> None:
    op.drop_table("correlation_watermark")
    op.drop_table("correlation_invalidations")
    op.drop_table("vehicle_correlation_1h")
