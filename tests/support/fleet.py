"""`FleetData`: what a test posted through the API (readings, deduplicated as the platform must, and the mapping
history), and the analytics the API must answer with, computed here in plain Python, never from the platform's
SQL. Shared by the analytics, alerts and correlation-rollup tests.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from jobs.correlation import refresh_correlation
from tests.support.builders import meter_reading, vehicle_reading

HOUR = timedelta(hours=1)


def floor_hour(t: datetime) -> datetime:
    return t.replace(minute=0, second=0, microsecond=0)


def api_time(t: datetime) -> str:
    """How the API writes a time."""
    return t.isoformat()


def iso(t: datetime) -> str:
    """How a device writes a time."""
    return t.isoformat().replace("+00:00", "Z")


@dataclass
class FleetData:
    """What a test posted: readings (deduplicated as the platform must) and the mapping history."""

    meters: dict[tuple[str, datetime], float] = field(default_factory=dict)
    vehicles: dict[tuple[str, datetime], tuple[float, float]] = field(default_factory=dict)  # (kwh, temp)
    mappings: list[tuple[str, str, datetime]] = field(default_factory=list)  # vehicle, meter, valid_from
    posted: list[dict] = field(default_factory=list)

    def meter(self, meter_id: str, t: datetime, kwh: float, voltage: float = 230.0) -> None:
        self.meters.setdefault((meter_id, t), kwh)  # a retry keeps the first value, as ingest does
        self.posted.append(meter_reading(meter_id, kwh=kwh, voltage=voltage, timestamp=iso(t)))

    def vehicle(self, vehicle_id: str, t: datetime, kwh: float, temp: float, soc: float = 50.0) -> None:
        self.vehicles.setdefault((vehicle_id, t), (kwh, temp))
        self.posted.append(vehicle_reading(vehicle_id, soc=soc, kwh=kwh, temp=temp, timestamp=iso(t)))

    def map(self, vehicle_id: str, meter_id: str, valid_from: datetime) -> None:
        self.mappings.append((vehicle_id, meter_id, valid_from))

    # expectations ------------------------------------------------------------------------------------------

    def meter_at(self, vehicle_id: str, t: datetime) -> str | None:
        """The meter mapped to the vehicle at instant t: the latest mapping that started at or before t."""
        starts = sorted((f, m) for v, m, f in self.mappings if v == vehicle_id and f <= t)
        return starts[-1][1] if starts else None

    def expected_performance(self, vehicle_id: str, start: datetime, end: datetime) -> dict[str, Any]:
        hours = []
        h = start
        while h < end:
            meter_id = self.meter_at(vehicle_id, h)
            ac = [k for (m, t), k in self.meters.items() if m == meter_id and h <= t < h + HOUR]
            dc = [k for (v, t), (k, _) in self.vehicles.items() if v == vehicle_id and h <= t < h + HOUR]
            hours.append(
                {
                    "hour": h,
                    "ac": sum(ac) if ac else None,
                    "dc": sum(dc) if dc else None,
                    "meter_readings": len(ac),
                    "vehicle_readings": len(dc),
                    "meter_id": meter_id if ac else None,
                }
            )
            h += HOUR
        in_window = sorted(
            (t, kwh, temp) for (v, t), (kwh, temp) in self.vehicles.items() if v == vehicle_id and start <= t < end
        )
        temps = [temp for _, _, temp in in_window]
        offsets, matched = [], 0
        for t, _, _ in in_window:
            meter_id = self.meter_at(vehicle_id, t)
            near = sorted(
                (abs((t - mt).total_seconds()), mt)
                for (m, mt) in self.meters
                if m == meter_id and abs((t - mt).total_seconds()) <= 29
            )
            if near:
                offset = (t - near[0][1]).total_seconds()
                offsets.append(offset)
                matched += abs(offset) <= 5
        total_ac = sum(x["ac"] for x in hours if x["ac"] is not None)
        total_dc = sum(x["dc"] for x in hours if x["dc"] is not None)
        return {
            "hours": hours,
            "total_ac": total_ac,
            "total_dc": total_dc,
            "efficiency": total_dc / total_ac if total_ac else None,
            "temps": temps,
            "vehicle_readings": len(in_window),
            "matched": matched,
            "typical_offset": statistics.median(offsets) if offsets else None,
        }

    def expected_fleet(self, start: datetime, end: datetime) -> dict[str, dict[str, Any]]:
        vehicle_ids = {v for v, _ in self.vehicles} | {v for v, _, _ in self.mappings}
        out = {}
        for vid in vehicle_ids:
            e = self.expected_performance(vid, start, end)
            ac = [x["ac"] for x in e["hours"] if x["ac"] is not None]
            dc = [x["dc"] for x in e["hours"] if x["dc"] is not None]
            if not ac and not dc:
                continue  # neither side reported in the window: not listed
            out[vid] = {
                "ac": sum(ac) if ac else None,
                "dc": sum(dc) if dc else None,
                "meter_readings": sum(x["meter_readings"] for x in e["hours"]),
                "vehicle_readings": sum(x["vehicle_readings"] for x in e["hours"]),
            }
        return out


def post_all(client, data: FleetData, items: list[dict] | None = None) -> None:
    items = data.posted if items is None else items
    for i in range(0, len(items), 1000):
        resp = client.post("/v1/telemetry/ingest", json=items[i : i + 1000])
        assert resp.status_code == 200, resp.get_json()


def post_mappings(client, data: FleetData) -> None:
    for vehicle_id, meter_id, valid_from in data.mappings:
        resp = client.post(
            "/v1/mappings", json={"vehicleId": vehicle_id, "meterId": meter_id, "validFrom": iso(valid_from)}
        )
        assert resp.status_code == 201, resp.get_json()


def refresh_like_policy(eng: Engine, up_to: datetime) -> None:
    """On Community, materialise the hourly aggregates and the correlation rollup up to `up_to` (hours after it
    stay real-time), as the refresh policies and `fleet jobs run` do."""
    with eng.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        caggs = conn.execute(sa.text("SELECT view_name FROM timescaledb_information.continuous_aggregates")).scalars()
        for cagg in caggs.all():
            conn.execute(sa.text("CALL refresh_continuous_aggregate(:c, NULL, :end)"), {"c": cagg, "end": up_to})
    refresh_correlation(eng, until=up_to, max_batches=10_000)


def assert_report_matches(report: dict, expected: dict, vehicle_id: str, start: datetime, end: datetime) -> None:
    approx = pytest.approx
    assert report["vehicleId"] == vehicle_id
    assert report["period"] == {"start": start.isoformat(), "end": end.isoformat()}
    got_hours = report["hourlyBreakdown"]
    assert [h["hour"] for h in got_hours] == [x["hour"].isoformat() for x in expected["hours"]]  # every hour, in order
    for got, exp in zip(got_hours, expected["hours"], strict=True):
        where = got["hour"]
        assert got["acConsumed"] == (None if exp["ac"] is None else approx(exp["ac"], abs=1e-6)), where
        assert got["dcDelivered"] == (None if exp["dc"] is None else approx(exp["dc"], abs=1e-6)), where
        assert (got["meterReadings"], got["vehicleReadings"]) == (exp["meter_readings"], exp["vehicle_readings"]), where
        assert got["meterId"] == exp["meter_id"], where
        if exp["ac"] and exp["dc"] is not None:
            assert got["efficiency"] == approx(exp["dc"] / exp["ac"], abs=1e-6), where
        else:
            assert got["efficiency"] is None, where
    energy = report["energyMetrics"]
    assert energy["totalAcConsumed"] == approx(expected["total_ac"], abs=1e-6)
    assert energy["totalDcDelivered"] == approx(expected["total_dc"], abs=1e-6)
    assert energy["powerLoss"] == approx(expected["total_ac"] - expected["total_dc"], abs=1e-6)
    if expected["efficiency"] is None:
        assert energy["efficiencyRatio"] is None
    else:
        assert energy["efficiencyRatio"] == approx(expected["efficiency"], abs=1e-6)
    temps = expected["temps"]
    battery = report["batteryMetrics"]
    assert battery == {
        "avgTemperature": approx(sum(temps) / len(temps), abs=1e-3) if temps else None,
        "maxTemperature": max(temps) if temps else None,
        "minTemperature": min(temps) if temps else None,
    }
    corr = report["correlation"]
    assert corr["vehicleReadings"] == expected["vehicle_readings"]
    assert corr["matchedReadings"] == expected["matched"]
    rate = expected["matched"] / expected["vehicle_readings"] if expected["vehicle_readings"] else None
    assert corr["matchRate"] == (None if rate is None else approx(rate, abs=1e-6))
    offset = expected["typical_offset"]
    assert corr["typicalClockOffsetSeconds"] == (None if offset is None else approx(offset, abs=1e-3))
    assert corr["toleranceSeconds"] == 5
