"""Hourly per-device rollups, the per-vehicle hourly energy view, and archival policies

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26

Why: dashboards and analysts read hourly AC/DC sums instead of 28.8M raw rows a day. Rollups are per device
(no JOIN inside an aggregate: a continuous aggregate that joins the mapping is not invalidated when the
mapping changes); the vehicle->meter join happens at query time in `vehicle_energy_1h`, so a re-map is
visible at once and never rewrites the past.

Editions: on Community ('timescale') `meter_readings_1h` / `vehicle_readings_1h` are continuous aggregates
with real-time aggregation (the unmaterialised recent hours come from the hypertable), and refresh,
compression and retention policies are added. On Apache they are plain views with the same SELECT over the
hypertables, so every query of them gives the same rows on both editions; no Community-only statement is
issued there (retention runs as the project's own drop_chunks job).

Windows, and why they are safe: the refresh window reaches back REFRESH_START_OFFSET (30 days); raw history
is kept RAW_RETENTION (90 days), so raw rows are dropped only after two months of refresh runs have
materialised them, and a refresh never covers a range whose raw rows are gone (which would empty the
aggregate there). Aggregates are kept ROLLUP_RETENTION (3 years), longer than raw.

Cost: the aggregates are created WITH NO DATA (WITH DATA cannot run in a transaction); the refresh policy or
`fleet` backfills them. Runs in about a second.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

REFRESH_START_OFFSET = "30 days"
REFRESH_END_OFFSET = "1 hour"
REFRESH_SCHEDULE = "30 minutes"
COMPRESS_AFTER = "7 days"
RAW_RETENTION = "90 days"
ROLLUP_RETENTION = "1095 days"

RAW_TABLES = {"meter_readings": "meter_id", "vehicle_readings": "vehicle_id"}
ROLLUPS = ("meter_readings_1h", "vehicle_readings_1h")

METER_READINGS_1H = """
SELECT meter_id,
       time_bucket(INTERVAL '1 hour', recorded_at) AS bucket,
       sum(kwh_consumed_ac) AS kwh_consumed_ac,
       count(*) AS reading_count,
       min(voltage) AS voltage_min,
       max(voltage) AS voltage_max,
       avg(voltage) AS voltage_avg
FROM meter_readings
GROUP BY meter_id, time_bucket(INTERVAL '1 hour', recorded_at)
"""

VEHICLE_READINGS_1H = """
SELECT vehicle_id,
       time_bucket(INTERVAL '1 hour', recorded_at) AS bucket,
       sum(kwh_delivered_dc) AS kwh_delivered_dc,
       count(*) AS reading_count,
       min(battery_temp) AS battery_temp_min,
       max(battery_temp) AS battery_temp_max,
       avg(battery_temp) AS battery_temp_avg,
       min(soc) AS soc_min,
       max(soc) AS soc_max
FROM vehicle_readings
GROUP BY vehicle_id, time_bucket(INTERVAL '1 hour', recorded_at)
"""

# Each hour of a vehicle gets the AC of the meter mapped to it at the start of that hour (a mid-hour re-map
# takes effect from the next hour), plus its own DC. UNION ALL + GROUP BY rather than a FULL JOIN so that
# filters on vehicle_id and bucket are pushed into both sides (and into the aggregates' chunks).
# Hours where only one side reported keep the other side NULL: a gap is visible, never a zero.
VEHICLE_ENERGY_1H = """
CREATE VIEW vehicle_energy_1h AS
SELECT vehicle_id,
       bucket,
       max(meter_id) AS meter_id,
       sum(kwh_consumed_ac) AS kwh_consumed_ac,
       sum(kwh_delivered_dc) AS kwh_delivered_dc,
       sum(kwh_delivered_dc) / NULLIF(sum(kwh_consumed_ac), 0) AS efficiency,
       sum(kwh_consumed_ac) - sum(kwh_delivered_dc) AS power_loss,
       coalesce(sum(meter_reading_count), 0)::bigint AS meter_reading_count,
       coalesce(sum(vehicle_reading_count), 0)::bigint AS vehicle_reading_count,
       min(battery_temp_min) AS battery_temp_min,
       max(battery_temp_max) AS battery_temp_max,
       max(battery_temp_avg) AS battery_temp_avg
FROM (
    SELECT v.vehicle_id, v.bucket, NULL::text AS meter_id,
           NULL::double precision AS kwh_consumed_ac, NULL::bigint AS meter_reading_count,
           v.kwh_delivered_dc, v.reading_count AS vehicle_reading_count,
           v.battery_temp_min, v.battery_temp_max, v.battery_temp_avg
    FROM vehicle_readings_1h v
    UNION ALL
    SELECT map.vehicle_id, m.bucket, m.meter_id,
           m.kwh_consumed_ac, m.reading_count,
           NULL, NULL, NULL, NULL, NULL
    FROM vehicle_meter_mapping map
    JOIN meter_readings_1h m
      ON m.meter_id = map.meter_id
     AND m.bucket >= map.valid_from
     AND (map.valid_to IS NULL OR m.bucket < map.valid_to)
) sides
GROUP BY vehicle_id, bucket
"""


def _community() -> bool:
    license_ = op.get_bind().execute(sa.text("SELECT current_setting('timescaledb.license')")).scalar_one()
    return license_ == "timescale"


def upgrade() -> None:
    community = _community()
    for name, select in (
        ("meter_readings_1h", METER_READINGS_1H),
        ("vehicle_readings_1h", VEHICLE_READINGS_1H),
    ):
        if community:
            op.execute(
                f"CREATE MATERIALIZED VIEW {name}"
                " WITH (timescaledb.continuous, timescaledb.materialized_only = false)"
                f" AS {select} WITH NO DATA"
            )
        else:
            op.execute(f"CREATE VIEW {name} AS {select}")
    op.execute(VEHICLE_ENERGY_1H)

    if not community:
        return
    for rollup in ROLLUPS:
        op.execute(
            f"SELECT add_continuous_aggregate_policy('{rollup}',"
            f" start_offset => INTERVAL '{REFRESH_START_OFFSET}',"
            f" end_offset => INTERVAL '{REFRESH_END_OFFSET}',"
            f" schedule_interval => INTERVAL '{REFRESH_SCHEDULE}')"
        )
        op.execute(f"SELECT add_retention_policy('{rollup}', drop_after => INTERVAL '{ROLLUP_RETENTION}')")
    for table, device_column in RAW_TABLES.items():
        op.execute(
            f"ALTER TABLE {table} SET (timescaledb.compress,"
            f" timescaledb.compress_segmentby = '{device_column}',"
            " timescaledb.compress_orderby = 'recorded_at DESC')"
        )
        op.execute(f"SELECT add_compression_policy('{table}', compress_after => INTERVAL '{COMPRESS_AFTER}')")
        op.execute(f"SELECT add_retention_policy('{table}', drop_after => INTERVAL '{RAW_RETENTION}')")


def downgrade() -> None:
    community = _community()
    op.execute("DROP VIEW vehicle_energy_1h")
    for rollup in ROLLUPS:
        # Dropping a continuous aggregate also removes its refresh and retention jobs.
        op.execute(f"DROP {'MATERIALIZED VIEW' if community else 'VIEW'} {rollup}")
    if not community:
        return
    for table in RAW_TABLES:
        op.execute(f"SELECT remove_retention_policy('{table}', if_exists => true)")
        op.execute(f"SELECT remove_compression_policy('{table}', if_exists => true)")
        # Compression can only be switched off once no chunk is compressed.
        op.execute(f"SELECT decompress_chunk(c, if_compressed => true) FROM show_chunks('{table}') c")
        op.execute(f"ALTER TABLE {table} SET (timescaledb.compress = false)")
