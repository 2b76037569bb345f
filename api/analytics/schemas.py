"""Analytics query and response schemas; JSON names are camelCase, as in the API contract."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import marshmallow as ma
from flask import current_app

from api.analytics.window import Window, WindowError, resolve_window
from api.fields import UtcDateTime

#: Dates outside this range are refused (they are no reading's time, and window arithmetic must not overflow).
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 1, 1, tzinfo=UTC)

FLEET_SORT_KEYS = ("vehicleId", "efficiency", "totalAcConsumed", "totalDcDelivered", "powerLoss")


def _date(name: str, description: str) -> UtcDateTime:
    return UtcDateTime(
        data_key=name,
        load_default=None,
        validate=ma.validate.Range(EARLIEST, LATEST, max_inclusive=False),
        metadata={"description": description},
    )


class WindowQueryArgsSchema(ma.Schema):
    """[startDate, endDate), widened to whole hours; the default is the 24 hours up to the end of this hour."""

    start_date = _date(
        "startDate",
        "Window start, ISO 8601 with offset (inclusive; rounded down to the hour). Default: endDate - 24 h.",
    )
    end_date = _date(
        "endDate",
        "Window end, ISO 8601 with offset (exclusive; rounded up to the hour). Default: startDate + 24 h, or"
        " the end of the current hour when neither is given.",
    )

    @ma.validates_schema
    def _check_window(self, data: dict[str, Any], **kwargs: Any) -> None:
        try:
            self._resolve(data)
        except WindowError as exc:
            raise ma.ValidationError(exc.message, exc.field) from None

    @ma.post_load
    def _to_window(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        rest = {k: v for k, v in data.items() if k not in ("start_date", "end_date")}
        return {**rest, "window": self._resolve(data)}

    @staticmethod
    def _resolve(data: dict[str, Any]) -> Window:
        settings = current_app.extensions["fleet.settings"]
        return resolve_window(
            data.get("start_date"),
            data.get("end_date"),
            now=datetime.now(UTC),
            max_days=settings.analytics_max_window_days,
        )


class FleetQueryArgsSchema(WindowQueryArgsSchema):
    sort = ma.fields.String(
        load_default="vehicleId",
        validate=ma.validate.OneOf([*FLEET_SORT_KEYS, *(f"-{k}" for k in FLEET_SORT_KEYS)]),
        metadata={"description": "Sort key; a leading '-' sorts descending. Unknown values last; ties by vehicleId."},
    )
    below_threshold = ma.fields.Boolean(
        data_key="belowThreshold",
        load_default=False,
        metadata={"description": "Only vehicles whose efficiency is known and below the alert threshold"},
    )


class PeriodSchema(ma.Schema):
    start = UtcDateTime(metadata={"description": "Window start (inclusive), on the hour"})
    end = UtcDateTime(metadata={"description": "Window end (exclusive), on the hour"})


def _kwh(name: str, description: str) -> ma.fields.Float:
    return ma.fields.Float(data_key=name, allow_none=True, metadata={"description": description})


class EnergyMetricsSchema(ma.Schema):
    total_ac_consumed = _kwh("totalAcConsumed", "kWh drawn from the grid by the mapped meter(s) in the window")
    total_dc_delivered = _kwh("totalDcDelivered", "kWh delivered into the battery in the window")
    efficiency_ratio = _kwh("efficiencyRatio", "totalDcDelivered / totalAcConsumed; null when no AC was consumed")
    power_loss = _kwh("powerLoss", "totalAcConsumed - totalDcDelivered, kWh")


class BatteryMetricsSchema(ma.Schema):
    avg_temperature = _kwh("avgTemperature", "Mean battery temperature over the window's readings, °C")
    max_temperature = _kwh("maxTemperature", "°C")
    min_temperature = _kwh("minTemperature", "°C")


class HourSchema(ma.Schema):
    hour = UtcDateTime(metadata={"description": "Start of the hour"})
    ac_consumed = _kwh("acConsumed", "kWh of the meter mapped at the start of the hour; null: no meter reading")
    dc_delivered = _kwh("dcDelivered", "kWh into the battery; null: no vehicle reading")
    efficiency = _kwh("efficiency", "dcDelivered / acConsumed; null when either is null or AC is 0")
    meter_id = ma.fields.String(data_key="meterId", allow_none=True, metadata={"description": "Meter of the AC"})
    meter_readings = ma.fields.Integer(data_key="meterReadings", metadata={"description": "Readings behind acConsumed"})
    vehicle_readings = ma.fields.Integer(
        data_key="vehicleReadings", metadata={"description": "Readings behind dcDelivered"}
    )


class CorrelationSchema(ma.Schema):
    vehicle_readings = ma.fields.Integer(data_key="vehicleReadings", metadata={"description": "In the window"})
    matched_readings = ma.fields.Integer(
        data_key="matchedReadings",
        metadata={"description": "Vehicle readings with a reading of the mapped meter within toleranceSeconds"},
    )
    match_rate = ma.fields.Float(
        data_key="matchRate", allow_none=True, metadata={"description": "matchedReadings / vehicleReadings"}
    )
    typical_clock_offset_seconds = ma.fields.Float(
        data_key="typicalClockOffsetSeconds",
        allow_none=True,
        metadata={
            "description": "Median of (vehicle reading time - nearest meter reading time) over readings with a meter"
            " reading within 29 s; positive: the vehicle's clock runs ahead of its meter's"
        },
    )
    tolerance_seconds = ma.fields.Float(data_key="toleranceSeconds")


class PerformanceSchema(ma.Schema):
    vehicle_id = ma.fields.String(data_key="vehicleId")
    period = ma.fields.Nested(PeriodSchema)
    energy_metrics = ma.fields.Nested(EnergyMetricsSchema, data_key="energyMetrics")
    battery_metrics = ma.fields.Nested(BatteryMetricsSchema, data_key="batteryMetrics")
    hourly_breakdown = ma.fields.List(
        ma.fields.Nested(HourSchema),
        data_key="hourlyBreakdown",
        metadata={"description": "Every hour of the window, oldest first"},
    )
    correlation = ma.fields.Nested(
        CorrelationSchema, metadata={"description": "Clock alignment of the vehicle's and its meter's readings"}
    )


class FleetVehicleSchema(ma.Schema):
    vehicle_id = ma.fields.String(data_key="vehicleId")
    total_ac_consumed = _kwh("totalAcConsumed", "kWh; null when no mapped meter reported in the window")
    total_dc_delivered = _kwh("totalDcDelivered", "kWh; null when the vehicle did not report in the window")
    efficiency_ratio = _kwh("efficiencyRatio", "totalDcDelivered / totalAcConsumed")
    power_loss = _kwh("powerLoss", "totalAcConsumed - totalDcDelivered, kWh")
    meter_readings = ma.fields.Integer(data_key="meterReadings")
    vehicle_readings = ma.fields.Integer(data_key="vehicleReadings")
    below_threshold = ma.fields.Boolean(
        data_key="belowThreshold",
        allow_none=True,
        metadata={"description": "efficiencyRatio below the alert threshold; null when efficiency is unknown"},
    )
