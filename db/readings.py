"""Readings: the ingest dual write (history + current state) in one statement per device kind.

Each call writes a whole batch with one round trip: the input arrives as arrays, `unnest` turns them into
rows, history takes them with ON CONFLICT DO NOTHING (a retried reading is stored once), and only the
readings actually stored move current state, and only forwards (an older reading never overwrites a newer
one). Rows are sorted by device so concurrent batches lock current-state rows in the same order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

_METER_DUAL_WRITE = sa.text(
    """
    WITH input AS (
        SELECT * FROM unnest(CAST(:meter_id AS text[]), CAST(:recorded_at AS timestamptz[]),
                             CAST(:kwh_consumed_ac AS float8[]), CAST(:voltage AS float8[]))
            AS t(meter_id, recorded_at, kwh_consumed_ac, voltage)
    ), stored AS (
        INSERT INTO meter_readings (meter_id, recorded_at, kwh_consumed_ac, voltage)
        SELECT meter_id, recorded_at, kwh_consumed_ac, voltage FROM input ORDER BY meter_id, recorded_at
        ON CONFLICT (meter_id, recorded_at) DO NOTHING
        RETURNING meter_id, recorded_at, kwh_consumed_ac, voltage
    ), newest AS (
        INSERT INTO meters_current (meter_id, recorded_at, kwh_consumed_ac, voltage, updated_at)
        SELECT DISTINCT ON (meter_id) meter_id, recorded_at, kwh_consumed_ac, voltage, now()
        FROM stored ORDER BY meter_id, recorded_at DESC
        ON CONFLICT (meter_id) DO UPDATE
           SET recorded_at = EXCLUDED.recorded_at, kwh_consumed_ac = EXCLUDED.kwh_consumed_ac,
               voltage = EXCLUDED.voltage, updated_at = EXCLUDED.updated_at
         WHERE meters_current.recorded_at < EXCLUDED.recorded_at
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM stored) AS stored, (SELECT count(*) FROM newest) AS current_updated
    """
)

_VEHICLE_DUAL_WRITE = sa.text(
    """
    WITH input AS (
        SELECT * FROM unnest(CAST(:vehicle_id AS text[]), CAST(:recorded_at AS timestamptz[]),
                             CAST(:soc AS float8[]), CAST(:kwh_delivered_dc AS float8[]),
                             CAST(:battery_temp AS float8[]), CAST(:is_charging AS boolean[]))
            AS t(vehicle_id, recorded_at, soc, kwh_delivered_dc, battery_temp, is_charging)
    ), stored AS (
        INSERT INTO vehicle_readings (vehicle_id, recorded_at, soc, kwh_delivered_dc, battery_temp, is_charging)
        SELECT vehicle_id, recorded_at, soc, kwh_delivered_dc, battery_temp, is_charging
        FROM input ORDER BY vehicle_id, recorded_at
        ON CONFLICT (vehicle_id, recorded_at) DO NOTHING
        RETURNING vehicle_id, recorded_at, soc, kwh_delivered_dc, battery_temp, is_charging
    ), newest AS (
        INSERT INTO vehicles_current
            (vehicle_id, recorded_at, soc, kwh_delivered_dc, battery_temp, is_charging, updated_at)
        SELECT DISTINCT ON (vehicle_id) vehicle_id, recorded_at, soc, kwh_delivered_dc, battery_temp, is_charging, now()
        FROM stored ORDER BY vehicle_id, recorded_at DESC
        ON CONFLICT (vehicle_id) DO UPDATE
           SET recorded_at = EXCLUDED.recorded_at, soc = EXCLUDED.soc,
               kwh_delivered_dc = EXCLUDED.kwh_delivered_dc, battery_temp = EXCLUDED.battery_temp,
               is_charging = EXCLUDED.is_charging, updated_at = EXCLUDED.updated_at
         WHERE vehicles_current.recorded_at < EXCLUDED.recorded_at
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM stored) AS stored, (SELECT count(*) FROM newest) AS current_updated
    """
)


@dataclass(frozen=True)
class MeterReading:
    meter_id: str
    recorded_at: datetime
    kwh_consumed_ac: float
    voltage: float


@dataclass(frozen=True)
class VehicleReading:
    vehicle_id: str
    recorded_at: datetime
    soc: float
    kwh_delivered_dc: float
    battery_temp: float
    is_charging: bool | None = None


@dataclass(frozen=True)
class WriteResult:
    """How many readings were new (stored) and how many device states moved forward."""

    stored: int
    current_updated: int


def _columns(rows: Sequence[object], names: Sequence[str]) -> dict[str, list[object]]:
    return {name: [getattr(r, name) for r in rows] for name in names}


def insert_meter_readings(conn: Connection, rows: Sequence[MeterReading]) -> WriteResult:
    """Store meter readings once each and move meters_current forward; one statement."""
    if not rows:
        return WriteResult(0, 0)
    params = _columns(rows, ("meter_id", "recorded_at", "kwh_consumed_ac", "voltage"))
    result = conn.execute(_METER_DUAL_WRITE, params).one()
    return WriteResult(result.stored, result.current_updated)


def insert_vehicle_readings(conn: Connection, rows: Sequence[VehicleReading]) -> WriteResult:
    """Store vehicle readings once each and move vehicles_current forward; one statement."""
    if not rows:
        return WriteResult(0, 0)
    params = _columns(rows, ("vehicle_id", "recorded_at", "soc", "kwh_delivered_dc", "battery_temp", "is_charging"))
    result = conn.execute(_VEHICLE_DUAL_WRITE, params).one()
    return WriteResult(result.stored, result.current_updated)
