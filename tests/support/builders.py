"""Test data: readings as a device posts them to /v1/telemetry/ingest, and rows written straight to the tables.

Payload times default to `minutes_ago` before `NOW`, one instant fixed when the tests are collected: two
readings built alike are the same reading (a retry, a duplicate). Give `at` for an exact time, or override
any payload field by its API name (`timestamp="yesterday"`, `colour="red"`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

NOW = datetime.now(UTC).replace(microsecond=0)


def _timestamp(at: datetime | None, minutes_ago: float) -> str:
    return (at if at is not None else NOW - timedelta(minutes=minutes_ago)).isoformat()


def meter_reading(
    meter_id: Any = "m-1",
    minutes_ago: float = 10,
    kwh: Any = 0.25,
    voltage: Any = 230.0,
    *,
    at: datetime | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """A METER item of an ingest request."""
    payload = {"meterId": meter_id, "kwhConsumedAc": kwh, "voltage": voltage, "timestamp": _timestamp(at, minutes_ago)}
    return {"type": "METER", "payload": {**payload, **overrides}}


def vehicle_reading(
    vehicle_id: Any = "v-1",
    minutes_ago: float = 10,
    soc: Any = 55.5,
    kwh: Any = 0.2,
    temp: Any = 31.0,
    *,
    at: datetime | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """A VEHICLE item of an ingest request."""
    payload = {
        "vehicleId": vehicle_id,
        "soc": soc,
        "kwhDeliveredDc": kwh,
        "batteryTemp": temp,
        "timestamp": _timestamp(at, minutes_ago),
    }
    return {"type": "VEHICLE", "payload": {**payload, **overrides}}


# Rows written straight to the hypertables and the mapping table (no API, no current-state upsert).
INSERT_METER = sa.text(
    "INSERT INTO meter_readings (meter_id, recorded_at, kwh_consumed_ac, voltage) VALUES (:id, :t, :kwh, :v)"
)
INSERT_VEHICLE = sa.text(
    "INSERT INTO vehicle_readings (vehicle_id, recorded_at, soc, kwh_delivered_dc, battery_temp)"
    " VALUES (:id, :t, :soc, :kwh, :temp)"
)
INSERT_MAPPING = sa.text(
    "INSERT INTO vehicle_meter_mapping (vehicle_id, meter_id, valid_from, valid_to) VALUES (:v, :m, :f, :t)"
)
