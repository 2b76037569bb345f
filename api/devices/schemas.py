"""Status and listing schemas of meters and vehicles; JSON names are camelCase, as in the API contract."""

from __future__ import annotations

import marshmallow as ma

from api.fields import UtcDateTime, device_id

#: Longest silence a listing can ask about (10 years, in minutes): far beyond any retention, and small
#: enough that the interval cannot overflow.
MAX_SILENT_MINUTES = 10 * 366 * 24 * 60


def _last_seen() -> ma.fields.Float:
    return ma.fields.Float(
        data_key="lastSeenSecondsAgo",
        metadata={
            "description": "Seconds from recordedAt to the database's now() (negative if the device clock runs ahead)"
        },
    )


class MeterStatusSchema(ma.Schema):
    meter_id = ma.fields.String(data_key="meterId")
    kwh_consumed_ac = ma.fields.Float(
        data_key="kwhConsumedAc", metadata={"description": "kWh consumed in the newest reading's interval"}
    )
    voltage = ma.fields.Float()
    recorded_at = UtcDateTime(data_key="recordedAt", metadata={"description": "Time of the newest reading"})
    last_seen_seconds_ago = _last_seen()


class VehicleStatusSchema(ma.Schema):
    vehicle_id = ma.fields.String(data_key="vehicleId")
    soc = ma.fields.Float(metadata={"description": "State of charge, percent"})
    kwh_delivered_dc = ma.fields.Float(
        data_key="kwhDeliveredDc", metadata={"description": "kWh delivered in the newest reading's interval"}
    )
    battery_temp = ma.fields.Float(data_key="batteryTemp", metadata={"description": "Battery temperature, °C"})
    is_charging = ma.fields.Boolean(
        data_key="isCharging", allow_none=True, metadata={"description": "null when the vehicle does not report it"}
    )
    recorded_at = UtcDateTime(data_key="recordedAt", metadata={"description": "Time of the newest reading"})
    last_seen_seconds_ago = _last_seen()


class MeterQueryArgsSchema(ma.Schema):
    id_prefix = device_id(data_key="idPrefix", metadata={"description": "Only ids starting with this (literally)"})
    silent_for_minutes = ma.fields.Integer(
        data_key="silentForMinutes",
        validate=ma.validate.Range(1, MAX_SILENT_MINUTES),
        metadata={"description": "Only devices whose newest reading is older than this many minutes"},
    )


class VehicleQueryArgsSchema(MeterQueryArgsSchema):
    is_charging = ma.fields.Boolean(data_key="isCharging", metadata={"description": "Only (not) charging vehicles"})
    soc_below = ma.fields.Float(
        data_key="socBelow",
        validate=ma.validate.Range(0, 100),
        metadata={"description": "Only vehicles whose state of charge is below this percentage"},
    )
