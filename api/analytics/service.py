"""Analytics: one read transaction per call; turns the data layer's hourly rows into the API's report.

Numbers are rounded once, here, for the response: kWh and ratios to 6 decimals (a milliwatt-hour), degrees and
seconds to 3. Both editions sum the same readings, in different orders; rounding keeps their JSON identical.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine

import db
from api.analytics.window import Window
from db import analytics, correlation

ENERGY_DECIMALS = 6
MEASURE_DECIMALS = 3


def _round(value: float | None, decimals: int = ENERGY_DECIMALS) -> float | None:
    # + 0.0 turns a rounded -0.0 into 0.0
    return None if value is None else round(value, decimals) + 0.0


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def vehicle_performance(engine: Engine, vehicle_id: str, window: Window) -> dict[str, Any]:
    """The performance report of one vehicle over `window` (NotFound for an unknown vehicle)."""
    with db.transaction(engine) as conn:
        perf = analytics.vehicle_performance(conn, vehicle_id, window.start, window.end)

    ac_hours = [h.ac_consumed for h in perf.hours if h.ac_consumed is not None]
    dc_hours = [h.dc_delivered for h in perf.hours if h.dc_delivered is not None]
    total_ac, total_dc = sum(ac_hours), sum(dc_hours)
    temps = [h for h in perf.hours if h.vehicle_readings]
    readings = sum(h.vehicle_readings for h in temps)
    corr = perf.correlation
    return {
        "vehicle_id": vehicle_id,
        "period": {"start": window.start, "end": window.end},
        "energy_metrics": {
            "total_ac_consumed": _round(total_ac),
            "total_dc_delivered": _round(total_dc),
            "efficiency_ratio": _round(_ratio(total_dc, total_ac)),
            "power_loss": _round(total_ac - total_dc),
        },
        "battery_metrics": {
            # The window's mean over all readings: each hour's mean weighted by its reading count.
            "avg_temperature": _round(
                sum(h.battery_temp_avg * h.vehicle_readings for h in temps) / readings if readings else None,
                MEASURE_DECIMALS,
            ),
            "max_temperature": _round(max((h.battery_temp_max for h in temps), default=None), MEASURE_DECIMALS),
            "min_temperature": _round(min((h.battery_temp_min for h in temps), default=None), MEASURE_DECIMALS),
        },
        "hourly_breakdown": [
            {
                "hour": h.hour,
                "ac_consumed": _round(h.ac_consumed),
                "dc_delivered": _round(h.dc_delivered),
                "efficiency": _round(_ratio(h.dc_delivered, h.ac_consumed)),
                "meter_id": h.meter_id,
                "meter_readings": h.meter_readings,
                "vehicle_readings": h.vehicle_readings,
            }
            for h in perf.hours
        ],
        "correlation": {
            "vehicle_readings": corr.vehicle_readings,
            "matched_readings": corr.matched_readings,
            "match_rate": _round(_ratio(corr.matched_readings, corr.vehicle_readings)),
            "typical_clock_offset_seconds": _round(corr.typical_offset_seconds, MEASURE_DECIMALS),
            "tolerance_seconds": correlation.MATCH_TOLERANCE_SECONDS,
        },
    }


def fleet_performance(
    engine: Engine,
    window: Window,
    *,
    sort: str,
    below_threshold: bool,
    threshold: float,
    limit: int,
    offset: int,
) -> tuple[list[dict[str, Any]], int]:
    """One page of per-vehicle totals over `window`, and the number of vehicles in all."""
    descending = sort.startswith("-")
    with db.transaction(engine) as conn:
        vehicles, total = analytics.fleet_performance(
            conn,
            window.start,
            window.end,
            efficiency_below=threshold if below_threshold else None,
            sort=sort.lstrip("-"),  # type: ignore[arg-type]  # checked by the query schema
            descending=descending,
            limit=limit,
            offset=offset,
        )
    return [
        {
            "vehicle_id": v.vehicle_id,
            "total_ac_consumed": _round(v.total_ac_consumed),
            "total_dc_delivered": _round(v.total_dc_delivered),
            "efficiency_ratio": _round(v.efficiency),
            "power_loss": _round(v.power_loss),
            "meter_readings": v.meter_readings,
            "vehicle_readings": v.vehicle_readings,
            "below_threshold": None if v.efficiency is None else v.efficiency < threshold,
        }
        for v in vehicles
    ], total
