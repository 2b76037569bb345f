"""History hypertables, current-state tables and the vehicle->meter mapping

Revision ID: 0001
Revises:
Create Date: 2026-11-26

Why: the ground every reading stands on, on both TimescaleDB editions (hypertables, time_bucket and
drop_chunks are Apache-licensed). One row per (device, recorded_at) in history makes ingest idempotent; the
current-state tables give O(1) status reads; the mapping keeps validity in time so a re-map never rewrites
which meter fed a vehicle in the past (btree_gist lets an exclusion constraint forbid overlapping validity).

Cost: all tables are created empty; runs in well under a second.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ExcludeConstraint

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

CHUNK_INTERVAL = "1 day"
DEVICE_ID_MAX_LENGTH = 64  # same bound as db.schema.DEVICE_ID_MAX_LENGTH; migrations import no app code


def _device_id(name: str) -> sa.Column:
    return sa.Column(name, sa.Text, nullable=False)


def _device_id_check(table: str, column: str) -> sa.CheckConstraint:
    return sa.CheckConstraint(
        f"char_length({column}) BETWEEN 1 AND {DEVICE_ID_MAX_LENGTH}",
        name=op.f(f"{table}_{column}_length_check"),
    )


def _timestamps(*names: str) -> list[sa.Column]:
    return [sa.Column(n, sa.DateTime(timezone=True), nullable=False) for n in names]


def _created_now(name: str) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now())


def _make_hypertable(table: str) -> None:
    # Our own time index is declared with the table (so `alembic check` sees it): skip TimescaleDB's default.
    op.execute(
        sa.text(
            f"SELECT create_hypertable('{table}', by_range('recorded_at', INTERVAL '{CHUNK_INTERVAL}'),"
            " create_default_indexes => false)"
        )
    )


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    op.execute("CREATE EXTENSION IF NOT EXISTS btree_gist")

    op.create_table(
        "meter_readings",
        _device_id("meter_id"),
        *_timestamps("recorded_at"),
        sa.Column("kwh_consumed_ac", sa.Float(precision=53), nullable=False),
        sa.Column("voltage", sa.Float(precision=53), nullable=False),
        _created_now("received_at"),
        sa.PrimaryKeyConstraint("meter_id", "recorded_at", name="meter_readings_pkey"),
        sa.CheckConstraint("kwh_consumed_ac >= 0", name=op.f("meter_readings_kwh_consumed_ac_nonnegative_check")),
        _device_id_check("meter_readings", "meter_id"),
    )
    op.create_index("meter_readings_recorded_at_idx", "meter_readings", [sa.text("recorded_at DESC")])
    _make_hypertable("meter_readings")

    op.create_table(
        "vehicle_readings",
        _device_id("vehicle_id"),
        *_timestamps("recorded_at"),
        sa.Column("soc", sa.Float(precision=53), nullable=False),
        sa.Column("kwh_delivered_dc", sa.Float(precision=53), nullable=False),
        sa.Column("battery_temp", sa.Float(precision=53), nullable=False),
        sa.Column("is_charging", sa.Boolean, nullable=True),
        _created_now("received_at"),
        sa.PrimaryKeyConstraint("vehicle_id", "recorded_at", name="vehicle_readings_pkey"),
        sa.CheckConstraint("kwh_delivered_dc >= 0", name=op.f("vehicle_readings_kwh_delivered_dc_nonnegative_check")),
        sa.CheckConstraint("soc BETWEEN 0 AND 100", name=op.f("vehicle_readings_soc_range_check")),
        _device_id_check("vehicle_readings", "vehicle_id"),
    )
    op.create_index("vehicle_readings_recorded_at_idx", "vehicle_readings", [sa.text("recorded_at DESC")])
    _make_hypertable("vehicle_readings")

    op.create_table(
        "meters_current",
        _device_id("meter_id"),
        *_timestamps("recorded_at"),
        sa.Column("kwh_consumed_ac", sa.Float(precision=53), nullable=False),
        sa.Column("voltage", sa.Float(precision=53), nullable=False),
        _created_now("updated_at"),
        sa.PrimaryKeyConstraint("meter_id", name="meters_current_pkey"),
    )
    op.create_index("meters_current_recorded_at_idx", "meters_current", ["recorded_at"])

    op.create_table(
        "vehicles_current",
        _device_id("vehicle_id"),
        *_timestamps("recorded_at"),
        sa.Column("soc", sa.Float(precision=53), nullable=False),
        sa.Column("kwh_delivered_dc", sa.Float(precision=53), nullable=False),
        sa.Column("battery_temp", sa.Float(precision=53), nullable=False),
        sa.Column("is_charging", sa.Boolean, nullable=True),
        _created_now("updated_at"),
        sa.PrimaryKeyConstraint("vehicle_id", name="vehicles_current_pkey"),
    )
    op.create_index("vehicles_current_recorded_at_idx", "vehicles_current", ["recorded_at"])
    op.create_index("vehicles_current_soc_idx", "vehicles_current", ["soc"])

    op.create_table(
        "vehicle_meter_mapping",
        _device_id("vehicle_id"),
        _device_id("meter_id"),
        *_timestamps("valid_from"),
        sa.Column("valid_to", sa.DateTime(timezone=True), nullable=True),
        _created_now("created_at"),
        sa.PrimaryKeyConstraint("vehicle_id", "valid_from", name="vehicle_meter_mapping_pkey"),
        sa.CheckConstraint(
            "valid_to IS NULL OR valid_to > valid_from",
            name=op.f("vehicle_meter_mapping_validity_order_check"),
        ),
        ExcludeConstraint(
            ("vehicle_id", "="),
            (sa.text("tstzrange(valid_from, valid_to)"), "&&"),
            name="vehicle_meter_mapping_no_overlap",
            using="gist",
        ),
    )
    op.create_index("vehicle_meter_mapping_meter_id_idx", "vehicle_meter_mapping", ["meter_id", "valid_from"])


def downgrade() -> None:
    # Dropping a hypertable drops its chunks. The extensions stay: other databases objects may use them,
    # and removing timescaledb needs a fresh session anyway.
    for table in ("vehicle_meter_mapping", "vehicles_current", "meters_current"):
        op.drop_table(table)
    for table in ("vehicle_readings", "meter_readings"):
        op.execute(f"DROP TABLE {table} CASCADE")
