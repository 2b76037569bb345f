"""Alerts: low charger efficiency, vehicle/meter readings that stopped correlating, silent devices

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26

Why: ops need to know which vehicles lose too much energy between grid and battery, which vehicle/meter
pairs stopped lining up (clock skew or a wrong mapping), and which devices went quiet, without writing SQL.
`fleet alerts scan` (and the `fleet jobs run` scheduler) evaluate the conditions; an alert is opened once per
device and kind (a partial unique index enforces "one open alert"), refreshed while the condition holds, and
resolved (kept, with resolved_at) when it clears, so the history of a device's alerts stays readable.

Cost: one new, empty table; no lock on live tables. Runs in well under a second on both editions.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

KINDS = ("low_efficiency", "correlation_lost", "silent_device")
DEVICE_TYPES = ("meter", "vehicle")
DEVICE_ID_MAX_LENGTH = 64  # same value as db.schema (migrations import no app code)


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column("id", sa.BigInteger, sa.Identity(always=True), nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("device_type", sa.Text, nullable=False),
        sa.Column("device_id", sa.Text, nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        # Last scan that found the condition still true.
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),  # NULL: open
        # What the scan measured (efficiency, match rate, silence, window, threshold), for the operator.
        sa.Column("details", postgresql.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.PrimaryKeyConstraint("id", name="alerts_pkey"),
        sa.CheckConstraint(f"kind IN {KINDS!r}", name=op.f("alerts_kind_check")),
        sa.CheckConstraint(f"device_type IN {DEVICE_TYPES!r}", name=op.f("alerts_device_type_check")),
        sa.CheckConstraint(
            f"char_length(device_id) BETWEEN 1 AND {DEVICE_ID_MAX_LENGTH}", name=op.f("alerts_device_id_length_check")
        ),
        sa.CheckConstraint("resolved_at IS NULL OR resolved_at >= opened_at", name=op.f("alerts_resolution_check")),
    )
    op.create_index(
        "alerts_one_open_per_device_and_kind",
        "alerts",
        ["kind", "device_type", "device_id"],
        unique=True,
        postgresql_where=sa.text("resolved_at IS NULL"),
    )
    op.create_index("alerts_opened_at_idx", "alerts", ["opened_at"])


def downgrade() -> None:
    op.drop_table("alerts")
